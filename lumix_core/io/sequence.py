"""Frame-numbered sequences of a shot's maps, named the way compositors read them.

Layout: one folder per sequence, inside the output folder (``prefix`` = ``[sub/folders/]<name>``)::

    <name>/<name>.####.exr            exr:          one multi-layer EXR per frame (the layers of
                                                    :func:`lumix_core.io.export.save_maps`)
    <name>/<name>_<map>.####.exr      exr-per-map:  one EXR per map and frame, that map's layer only
    <name>/<name>_<map>.####.png      png16:        one 16-bit PNG per map and frame (depth grey)

``####``: the frame number, from ``start_frame``, zero-padded to 4 digits (more where the
shot needs them) -- what Nuke's ``####``, Blender's image sequence and Resolve's frame
detection read. Never overwritten: if the folder ``<name>`` exists, the sequence goes to the
first free ``<name>_v002``, ``<name>_v003`` ... (folder and file names alike) and
:attr:`SavedSequence.note` says so. The folder is claimed by creating it (so two saves never
share one), every frame is written atomically, and the sequence is written whole or not at
all: a failure removes what the call wrote, the folder included.

Every file carries the shot's metadata (EXR header attributes, PNG text chunks): ``lumix.prompt``,
``lumix.seed``, ``lumix.conventions`` (JSON), ``lumix.shot`` (the name), ``lumix.frame``,
``lumix.frame_range`` (``first-last``), plus ``extra``; EXRs also ``lumix.exr_encoding``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

import numpy as np
from torch import Tensor

from ..conventions import conventions_metadata
from .export import (
    SavedFile,
    _import_openexr,
    _Planned,
    _png_pixels,
    _write_set,
    check_target_names,
    checked_maps,
    exr_encoding,
    exr_writer,
    resolve_prefix,
)
from .png import encode_png, escape_unencodable, safe_text

__all__ = ["SEQUENCE_FORMATS", "FRAME_DIGITS", "SavedSequence", "frame_token", "sequence_names", "save_sequence"]

SEQUENCE_FORMATS: tuple[str, ...] = ("exr", "exr-per-map", "png16")
#: Frame numbers are zero-padded to this many digits (``####``).
FRAME_DIGITS = 4
#: Versions tried after the bare name before giving up (``<name>_v002`` ... ``<name>_v999``).
MAX_VERSION = 999


@dataclass(frozen=True)
class SavedSequence:
    """A written sequence: its folder (absolute, and relative to the output folder), the name its
    files start with, the files in frame order (a file's ``scene`` is its frame number), and a note
    when the name was versioned."""

    folder: str
    subfolder: str
    name: str
    files: list[SavedFile]
    note: Optional[str] = None


def frame_token(frame: int, last: int) -> str:
    """``frame`` zero-padded to :data:`FRAME_DIGITS`, or to ``last``'s width where that is wider."""
    return f"{frame:0{max(FRAME_DIGITS, len(str(last)))}d}"


def sequence_names(name: str, maps: Iterable[str], frames: Iterable[int], last: int,
                   formats: Iterable[str]) -> list[tuple[str, int, Optional[str], str]]:
    """``(filename, frame, map or None, format)`` of every file of a sequence, in frame order."""
    out = []
    wanted = list(formats)
    names = list(maps)
    for frame in frames:
        token = frame_token(frame, last)
        if "exr" in wanted:
            out.append((f"{name}.{token}.exr", frame, None, "exr"))
        for m in names:
            if "exr-per-map" in wanted:
                out.append((f"{name}_{m}.{token}.exr", frame, m, "exr-per-map"))
            if "png16" in wanted:
                out.append((f"{name}_{m}.{token}.png", frame, m, "png16"))
    return out


def _claim_folder(parent: str, base: str) -> tuple[str, str, Optional[str]]:
    """Create the sequence's folder: ``base``, else the first free ``base_vNNN``; (path, name, note)."""
    os.makedirs(parent, exist_ok=True)
    for version in range(1, MAX_VERSION + 1):
        name = base if version == 1 else f"{base}_v{version:03d}"
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        note = None if version == 1 else (f"a sequence named {base} exists in {parent}; this one was written as "
                                          f"{name}/ instead (nothing was overwritten)")
        return path, name, note
    raise FileExistsError(f"LumiX: {base} and all its versions up to {base}_v{MAX_VERSION:03d} exist in {parent}; "
                          "choose another name. Nothing was written.")


def save_sequence(
    maps: Mapping[str, Tensor],
    output_dir: "str | os.PathLike[str]",
    prefix: str,
    *,
    start_frame: int = 1,
    formats: Iterable[str] = ("exr",),
    prompt: str = "",
    seed: Optional[int] = None,
    conventions: Optional[Mapping[str, object]] = None,
    extra: Optional[Mapping[str, str]] = None,
) -> SavedSequence:
    """Save a shot's display maps ``{name: [T, H, W, C]}`` (frame ``i`` at ``start_frame + i``) as
    the sequence described in the module docstring; returns what was written."""
    if not maps:
        raise ValueError("LumiX: no maps given; connect at least one map")
    images, count = checked_maps(maps, lambda i: f"frame {start_frame + i}")
    wanted = [str(f).strip().lower() for f in formats]
    unknown = sorted(set(wanted) - set(SEQUENCE_FORMATS))
    if unknown or not wanted:
        raise ValueError(f"LumiX: unknown or no sequence format {unknown or wanted}; choose from "
                         f"{', '.join(SEQUENCE_FORMATS)}")
    if isinstance(start_frame, bool) or not isinstance(start_frame, (int, np.integer)) or start_frame < 0:
        raise ValueError(f"LumiX: the start frame must be a whole number >= 0, got {start_frame!r}")
    if seed is not None and not isinstance(seed, (int, np.integer)):
        raise TypeError(f"LumiX: seed must be an integer or None, got {type(seed).__name__}")
    if any(f.startswith("exr") for f in wanted):
        _import_openexr()  # fail before anything is written

    parent, subfolder, base = resolve_prefix(output_dir, prefix)
    frames = range(int(start_frame), int(start_frame) + count)
    last = frames[-1]
    # Names checked at the longest version the folder could take, before anything is created.
    longest = f"{base}_v{MAX_VERSION:03d}"
    check_target_names(output_dir, "/".join(p for p in (subfolder, longest) if p),
                       [n for n, *_ in sequence_names(longest, images, frames, last, wanted)])

    conventions_text = json.dumps(dict(conventions or conventions_metadata()), ensure_ascii=False, sort_keys=True)
    folder, name, note = _claim_folder(parent, base)
    common = {"lumix.prompt": escape_unencodable(str(prompt)), "lumix.conventions": conventions_text,
              "lumix.shot": name, "lumix.frame_range": f"{frames[0]}-{last}", **dict(extra or {})}
    if seed is not None:
        common["lumix.seed"] = str(int(seed))
    encoding = json.dumps(exr_encoding(list(images)), sort_keys=True)

    def content(frame: int, m: Optional[str], fmt: str):
        i = frame - frames[0]
        meta = dict(common, **{"lumix.frame": str(frame)})
        if fmt == "png16":
            return lambda: encode_png(_png_pixels(m, images[m][i], 16), safe_text(dict(meta, **{"lumix.map": m})))
        header = dict(meta, **{"lumix.exr_encoding": encoding}, **({"lumix.map": m} if m else {}))
        return exr_writer(images, list(images) if m is None else [m], i, header)

    plan = [_Planned(filename, content(frame, m, fmt), frame, m, fmt)
            for filename, frame, m, fmt in sequence_names(name, images, frames, last, wanted)]
    relative = "/".join(p for p in (subfolder, name) if p)
    try:
        files = _write_set(plan, folder, relative)
    except BaseException:
        try:
            os.rmdir(folder)
        except OSError:
            pass
        raise
    return SavedSequence(folder, relative, name, files, note)

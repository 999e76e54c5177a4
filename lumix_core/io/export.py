"""Export of LumiX maps: per-map PNGs (8 and 16 bit) and one multi-layer float EXR per scene.

File names (``<counter>`` counts up like ComfyUI's SaveImage, so nothing is overwritten)::

    <prefix>_<counter:05>_<scene:02>_<map>.png         8-bit, every map (depth as grey)
    <prefix>_<counter:05>_<scene:02>_<map>_16bit.png   16-bit, depth (grey) and normal (RGB)
    <prefix>_<counter:05>_<scene:02>.exr               float32, all maps as layers
    <prefix>_<counter:05>_report.json                  the consistency report, when one is given

EXR layers (channel names ``<map>.<channel>``): ``albedo.R/G/B``, ``irradiance.R/G/B``,
``color.R/G/B`` in *linear* light (sRGB primaries; the sRGB EOTF is undone, as compositors
expect of EXR), ``normal.X/Y/Z`` as unit vectors in [-1, 1] (camera space, the recorded
normal convention), ``depth.Z`` as the relative [0, 1] depth with the recorded polarity
(near = 1 by default, like a disparity / 1/z pass). Maps of custom map sets get
``<map>.R/G/B``.

Metadata: PNG text chunks and EXR header attributes ``lumix.prompt``, ``lumix.seed``,
``lumix.map`` (PNG), ``lumix.scene``, ``lumix.conventions`` (JSON, see
:func:`lumix_core.conventions.conventions_metadata`), ``lumix.exr_encoding`` (EXR). All
values are strings (a seed can exceed EXR's 32-bit int attribute). The keys are namespaced
because ComfyUI reads a ``prompt`` text chunk as its graph JSON.

Safety: the prefix may name sub-folders but never leave the output folder; every file is
written to a temporary file in the target folder and then published under its final name
with an operation that fails instead of replacing an existing file. A set (all files of one
call) is written completely or not at all: names are checked first, a later failure removes
what the call wrote. Non-finite maps are refused; metadata is sanitised, never fatal.
"""
from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from ..conventions import (
    check_image,
    check_same_size,
    conventions_metadata,
    require_finite,
    rgb,
    single_channel,
    srgb_to_linear,
)
from ..maps import canonical
from .files import write_atomically, write_bytes_atomically
from .png import encode_png, escape_unencodable, safe_text

FORMATS: tuple[str, ...] = ("png8", "png16", "exr")

#: Maps worth 16 bits: smooth geometric signals that band visibly at 8 bits.
PNG16_MAPS: tuple[str, ...] = ("depth", "normal")

#: Maps stored as linear light in the EXR (sRGB-encoded in PNG).
LINEAR_IN_EXR: tuple[str, ...] = ("albedo", "irradiance", "color")

#: Longest file or folder name in bytes (ext4, XFS, APFS, NTFS all store 255).
NAME_MAX = 255
#: Longest path in bytes, terminating NUL included (Linux PATH_MAX).
PATH_MAX = 4096

#: File name suffix of the consistency report saved beside the maps.
REPORT_SUFFIX = "_report.json"

#: EXR channel names per map; other maps get R, G, B.
EXR_CHANNELS: dict[str, tuple[str, ...]] = {"normal": ("X", "Y", "Z"), "depth": ("Z",)}


@dataclass(frozen=True)
class SavedFile:
    """One written file. ``subfolder`` is relative to the output folder ("" at its top)."""

    path: str
    filename: str
    subfolder: str
    scene: Optional[int]  # None for the report, which covers every scene
    map: Optional[str]
    format: str


# ----------------------------------------------------------------------------- paths
def resolve_prefix(output_dir: "str | os.PathLike[str]", filename_prefix: str) -> tuple[str, str, str]:
    """Split ``filename_prefix`` into (absolute folder, subfolder, file base) inside ``output_dir``.

    Sub-folders (``"lumix/kitchen"``) are allowed; absolute paths and prefixes that climb out
    of the output folder (``"../x"``) are refused.
    """
    prefix = str(filename_prefix).strip()
    if not prefix:
        raise ValueError("filename_prefix is empty; give a name such as 'LumiX/maps'")
    if "\x00" in prefix:
        raise ValueError(f"filename_prefix {filename_prefix!r} contains a NUL character, which no file name can hold; "
                         "remove it (e.g. 'LumiX/maps')")
    _fs_bytes(prefix)
    if os.path.isabs(prefix) or re.match(r"^[A-Za-z]:", prefix) or prefix.startswith(("/", "\\")):
        raise ValueError(
            f"filename_prefix {filename_prefix!r} is an absolute path; it must be relative to the "
            "output folder (e.g. 'LumiX/maps')"
        )
    root = os.path.realpath(os.fspath(output_dir))
    target = os.path.realpath(os.path.join(root, prefix.replace("\\", "/")))
    if os.path.commonpath([root, target]) != root or target == root:
        raise ValueError(
            f"filename_prefix {filename_prefix!r} points outside the output folder {root}; "
            "use a relative prefix without '..' (e.g. 'LumiX/maps')"
        )
    folder, base = os.path.split(target)
    if prefix.endswith(("/", "\\")) or not base:
        raise ValueError(f"filename_prefix {filename_prefix!r} names a folder but no file name; "
                         "add one, e.g. 'LumiX/maps'")
    relative = os.path.relpath(folder, root)
    return folder, ("" if relative == "." else relative.replace(os.sep, "/")), base


def next_counter(folder: str, base: str) -> int:
    """1 + the highest ``<base>_<digits>`` counter already in ``folder`` (1 if none)."""
    pattern = re.compile(re.escape(base) + r"_(\d+)[_.]")
    highest = 0
    if os.path.isdir(folder):
        for entry in os.listdir(folder):
            match = pattern.match(entry)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def _fs_bytes(name: str) -> bytes:
    """``name`` as the file system stores it, or a clear refusal (e.g. a lone surrogate)."""
    try:
        return os.fsencode(name)
    except UnicodeEncodeError as e:
        raise ValueError(f"filename_prefix contains {name[e.start:e.end]!r}, which the file system cannot store in a "
                         "file name; remove it. Nothing was written.") from None


def check_target_names(output_dir: "str | os.PathLike[str]", subfolder: str, filenames: Iterable[str]) -> None:
    """Refuse a set of file names the file system cannot store, before anything is created.

    Checked up front so that a name that cannot be stored fails before any file of the set is
    written. Limits: :data:`NAME_MAX` bytes per name and folder, :data:`PATH_MAX` per path.
    """
    root = os.path.realpath(os.fspath(output_dir))
    for name in [p for p in subfolder.split("/") if p] + list(filenames):
        size = len(_fs_bytes(name))
        if size > NAME_MAX:
            raise ValueError(
                f"filename_prefix is too long: the name {name[:40]!r}... would be {size} bytes, file systems store "
                f"at most {NAME_MAX}; shorten the prefix by {size - NAME_MAX} bytes or more. Nothing was written.")
        path = os.path.join(root, subfolder, name)
        if len(_fs_bytes(path)) >= PATH_MAX:
            raise ValueError(f"the path of {name[:40]!r}... would be longer than {PATH_MAX - 1} bytes; use a shorter "
                             "filename_prefix or a shorter output folder. Nothing was written.")


# ----------------------------------------------------------------------------- pixels
def _quantize(x: Tensor, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    values = torch.round(x.detach().float().clamp(0.0, 1.0) * top).cpu().numpy()
    return values.astype(np.uint8 if bits == 8 else np.uint16)


def _png_pixels(name: str, image: Tensor, bits: int) -> np.ndarray:
    """``[H,W,C]`` map -> PNG array: depth as grey, everything else as RGB."""
    if name == "depth":
        return _quantize(single_channel(image.unsqueeze(0))[0], bits)
    return _quantize(rgb(image), bits)


def _exr_layers(name: str, image: Tensor) -> dict[str, np.ndarray]:
    """``[H,W,C]`` map -> ``{"<map>.<channel>": float32 [H,W]}`` in the documented encoding."""
    if name == "depth":
        planes = single_channel(image.unsqueeze(0))[0].unsqueeze(-1)
    elif name == "normal":
        planes = rgb(image) * 2.0 - 1.0
    elif name in LINEAR_IN_EXR:
        planes = srgb_to_linear(rgb(image))
    else:
        planes = rgb(image)
    channels = EXR_CHANNELS.get(name, ("R", "G", "B"))
    array = planes.detach().float().cpu().numpy()
    return {f"{name}.{c}": np.ascontiguousarray(array[..., i], dtype=np.float32) for i, c in enumerate(channels)}


def _import_openexr():
    try:
        import OpenEXR  # official bindings, PyPI "openexr"
    except ImportError as exc:
        raise RuntimeError(
            "EXR export needs the official OpenEXR Python bindings: pip install openexr "
            "(or switch the EXR format off). No EXR file was written."
        ) from exc
    if not hasattr(OpenEXR, "File"):
        raise RuntimeError(
            "EXR export needs OpenEXR >= 3.3 (the 'OpenEXR.File' API); the installed bindings are "
            "older: pip install -U openexr. No EXR file was written."
        )
    return OpenEXR


def write_exr(path: str, layers: Mapping[str, np.ndarray], header: Mapping[str, object]) -> None:
    """Write float32 ``layers`` and extra ``header`` attributes as one scanline ZIP EXR."""
    OpenEXR = _import_openexr()
    attributes = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    attributes.update(header)
    # OpenEXR.File replaces the arrays in the dict it is given by Channel objects: pass a copy.
    OpenEXR.File(attributes, dict(layers)).write(path)


# ----------------------------------------------------------------------------- saving
@dataclass(frozen=True)
class _Planned:
    """One file of a set: its name and how to write it (bytes, or a writer of a temp path)."""

    filename: str
    content: Callable[[], "bytes | Callable[[str], None]"]
    scene: Optional[int]
    map: Optional[str]
    format: str


def checked_maps(maps: Mapping[str, Tensor], item: Callable[[int], str]) -> tuple[dict[str, Tensor], int]:
    """``({canonical name: images}, batch size)``, checked: image layouts, one size, finite (``item(i)`` names i)."""
    images = {canonical(k): check_image(v, k, channels=(1, 3, 4)) for k, v in maps.items()}
    count, _, _ = check_same_size(images)
    for name, batch in images.items():
        require_finite(batch, f"the {name} map", "it comes from a failed decode or sampling; fix that node and run "
                       "again. Nothing was saved.", item)
    return images, count


def save_maps(
    maps: Mapping[str, Tensor],
    output_dir: "str | os.PathLike[str]",
    filename_prefix: str,
    *,
    prompt: str = "",
    seed: Optional[int] = None,
    formats: Iterable[str] = FORMATS,
    conventions: Optional[Mapping[str, object]] = None,
    extra_text: Optional[Mapping[str, str]] = None,
    report: Optional[str] = None,
    compress_level: int = 6,
) -> list[SavedFile]:
    """Save display-range maps ``{name: [N,H,W,C]}`` of ``N`` scenes; return the written files.

    A set is written completely or not at all: every name is checked before anything is
    created, and if writing still fails (disk full, a concurrent writer) the files already
    written for the set are removed. ``conventions`` describes the maps as given (default:
    :func:`conventions_metadata`); ``extra_text`` adds PNG text chunks (the ComfyUI node puts the
    graph there); metadata is sanitised (:func:`lumix_core.io.png.safe_text`), never a reason to
    lose the images. ``report`` (a JSON string, e.g. LumiX Consistency Report's) is saved as
    ``<prefix>_<counter>_report.json``.
    """
    if not maps:
        raise ValueError("save_maps: no maps given; connect at least one map")
    images, count = checked_maps(maps, lambda i: f"scene {i}")
    wanted = [str(f).strip().lower() for f in formats]
    unknown = sorted(set(wanted) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; choose from {list(FORMATS)}")
    if not wanted:
        raise ValueError("save_maps: no format selected; choose at least one of " + ", ".join(FORMATS))
    if seed is not None and not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer or None, got {type(seed).__name__}")
    if report is not None:
        try:
            json.loads(report)
        except ValueError as e:
            raise ValueError(f"report_json is not JSON ({e}); connect the report_json output of LumiX Consistency "
                             "Report, or leave the input unconnected. Nothing was saved.") from None
    exr = _import_openexr() if "exr" in wanted else None  # fail before writing anything

    folder, subfolder, base = resolve_prefix(output_dir, filename_prefix)
    conventions_text = json.dumps(dict(conventions or conventions_metadata()), ensure_ascii=False, sort_keys=True)
    common = {"lumix.prompt": escape_unencodable(str(prompt)), "lumix.conventions": conventions_text}
    if seed is not None:
        common["lumix.seed"] = str(int(seed))
    encoding = json.dumps(exr_encoding(list(images)), sort_keys=True)

    def plan_set(counter: int) -> list[_Planned]:
        plan: list[_Planned] = []
        for scene in range(count):
            stem = f"{base}_{counter:05d}_{scene:02d}"
            for name, batch in images.items():
                text = dict(extra_text or {})
                text.update(common, **{"lumix.map": name, "lumix.scene": str(scene)})
                text = safe_text(text)
                for fmt, bits, suffix in (("png8", 8, ""), ("png16", 16, "_16bit")):
                    if fmt in wanted and (fmt == "png8" or name in PNG16_MAPS):
                        plan.append(_Planned(
                            f"{stem}_{name}{suffix}.png",
                            lambda n=name, b=batch[scene], k=bits, t=text:
                                encode_png(_png_pixels(n, b, k), t, compress_level),
                            scene, name, fmt))
            if exr is not None:
                header: dict[str, object] = dict(common, **{"lumix.scene": str(scene)})
                header["lumix.exr_encoding"] = encoding
                plan.append(_Planned(f"{stem}.exr", exr_writer(images, list(images), scene, header), scene, None,
                                     "exr"))
        if report is not None:
            plan.append(_Planned(f"{base}_{counter:05d}{REPORT_SUFFIX}", lambda: report.encode("utf-8"),
                                 None, None, "json"))
        return plan

    attempt = 1
    while True:
        plan = plan_set(next_counter(folder, base))
        check_target_names(output_dir, subfolder, [p.filename for p in plan])
        try:
            return _write_set(plan, folder, subfolder)
        except SaveError as e:
            if not e.name_taken or attempt == NAME_ATTEMPTS:
                raise
        # Another save published a file of this counter first: that set keeps the counter, this one takes
        # the next; a random pause keeps two sets that both backed off from meeting again.
        time.sleep(random.uniform(0.0, 0.05 * attempt))
        attempt += 1


#: Counters a set tries when other saves into the same prefix keep taking its names.
NAME_ATTEMPTS = 5


def exr_writer(images: Mapping[str, Tensor], names: Iterable[str], index: int,
               header: Mapping[str, object]) -> Callable[[], Callable[[str], None]]:
    """A planned EXR's content: item ``index`` of the ``names`` maps as layers, made when the plan is written."""
    def layers_then_write() -> Callable[[str], None]:
        layers: dict[str, np.ndarray] = {}
        for name in names:
            layers.update(_exr_layers(name, images[name][index]))
        return lambda path: write_exr(path, layers, header)

    return layers_then_write


def _write_set(plan: list[_Planned], folder: str, subfolder: str) -> list[SavedFile]:
    """Write every planned file, or none: on a failure the files written so far (all new) are removed."""
    created = []
    parent = folder
    while not os.path.isdir(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    saved: list[SavedFile] = []
    try:
        os.makedirs(folder, exist_ok=True)
        for item in plan:
            path = os.path.join(folder, item.filename)
            content = item.content()
            if isinstance(content, bytes):
                write_bytes_atomically(path, content, overwrite=False)
            else:
                write_atomically(path, content, overwrite=False)
            saved.append(SavedFile(path, item.filename, subfolder, item.scene, item.map, item.format))
    except BaseException as e:  # interruption included: a set is never left half-written
        for f in saved:
            os.unlink(f.path)
        for d in created:  # innermost first; only the folders this call made, and only if empty
            try:
                os.rmdir(d)
            except OSError:
                break
        if not isinstance(e, OSError):
            raise
        failed = plan[len(saved)].filename
        taken = isinstance(e, FileExistsError) and os.path.isfile(os.path.join(folder, failed))
        raise SaveError(e, failed, len(saved), name_taken=taken) from e
    return saved


class SaveError(OSError):
    """A write failed part-way through a set; the set's files already written were removed.

    Keeps the failed write's ``errno``/``strerror`` and the file name, so a caller can word the
    failure its own way (the CLI: "cannot write into DIR: <reason>"); ``str()`` is the full
    sentence for callers that just show it (the ComfyUI node).
    """

    def __init__(self, cause: OSError, filename: str, removed: int, *, name_taken: bool = False) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), filename)
        #: Another writer published this name first (saves into one prefix at once), not a disk problem.
        self.name_taken = name_taken
        undone = f"the {removed} file(s) already written for this set were removed, nothing was saved"
        if self.name_taken:
            self.message = (f"another save took the name {filename} while this set was being written (several saves "
                            f"into the same filename_prefix at once, {NAME_ATTEMPTS} tries); {undone}. Run again, "
                            "or give each save its own filename_prefix.")
        else:
            self.message = (f"saving {filename} failed ({self.strerror}); {undone}. Free disk space or fix the output "
                            "folder's permissions, then run again.")

    def __str__(self) -> str:
        return self.message


def exr_encoding(names: Iterable[str]) -> dict[str, str]:
    """Per-layer description of the values stored in the EXR (for its header)."""
    out = {}
    for name in names:
        if name == "depth":
            out[name] = "depth.Z: relative depth [0,1] with the recorded polarity, not metric"
        elif name == "normal":
            out[name] = "normal.X/Y/Z: unit vectors [-1,1], camera space, the recorded normal convention"
        elif name in LINEAR_IN_EXR:
            out[name] = f"{name}.R/G/B: linear light (sRGB primaries), sRGB EOTF undone"
        else:
            out[name] = f"{name}.R/G/B: values as displayed, [0,1]"
    return out

"""Export of LumiX maps: per-map PNGs (8 and 16 bit) and one multi-layer float EXR per scene.

File names (``<counter>`` counts up like ComfyUI's SaveImage, so nothing is overwritten)::

    <prefix>_<counter:05>_<scene:02>_<map>.png         8-bit, every map (depth as grey)
    <prefix>_<counter:05>_<scene:02>_<map>_16bit.png   16-bit, depth (grey) and normal (RGB)
    <prefix>_<counter:05>_<scene:02>.exr               float32, all maps as layers

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
with an operation that fails instead of replacing an existing file.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from .conventions import (
    check_image,
    check_same_size,
    conventions_metadata,
    rgb,
    single_channel,
    srgb_to_linear,
)
from .files import write_atomically, write_bytes_atomically
from .maps import canonical
from .png import encode_png

FORMATS: tuple[str, ...] = ("png8", "png16", "exr")

#: Maps worth 16 bits: smooth geometric signals that band visibly at 8 bits.
PNG16_MAPS: tuple[str, ...] = ("depth", "normal")

#: Maps stored as linear light in the EXR (sRGB-encoded in PNG).
LINEAR_IN_EXR: tuple[str, ...] = ("albedo", "irradiance", "color")

#: EXR channel names per map; other maps get R, G, B.
EXR_CHANNELS: dict[str, tuple[str, ...]] = {"normal": ("X", "Y", "Z"), "depth": ("Z",)}


@dataclass(frozen=True)
class SavedFile:
    """One written file. ``subfolder`` is relative to the output folder ("" at its top)."""

    path: str
    filename: str
    subfolder: str
    scene: int
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
        raise ValueError(f"filename_prefix {filename_prefix!r} names a folder but no file name; add one, e.g. 'LumiX/maps'")
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
    compress_level: int = 6,
) -> list[SavedFile]:
    """Save display-range maps ``{name: [N,H,W,C]}`` of ``N`` scenes; return the written files.

    ``conventions`` describes the maps as given (default: :func:`conventions_metadata`);
    ``extra_text`` adds PNG text chunks (the ComfyUI node puts the graph there).
    """
    if not maps:
        raise ValueError("save_maps: no maps given; connect at least one map")
    images = {canonical(k): check_image(v, k, channels=(1, 3, 4)) for k, v in maps.items()}
    count, _, _ = check_same_size(images)
    wanted = [str(f).strip().lower() for f in formats]
    unknown = sorted(set(wanted) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; choose from {list(FORMATS)}")
    if not wanted:
        raise ValueError("save_maps: no format selected; choose at least one of " + ", ".join(FORMATS))
    if seed is not None and not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer or None, got {type(seed).__name__}")
    exr = _import_openexr() if "exr" in wanted else None  # fail before writing anything

    folder, subfolder, base = resolve_prefix(output_dir, filename_prefix)
    os.makedirs(folder, exist_ok=True)
    counter = next_counter(folder, base)
    conventions_text = json.dumps(dict(conventions or conventions_metadata()), ensure_ascii=False, sort_keys=True)
    common = {"lumix.prompt": str(prompt), "lumix.conventions": conventions_text}
    if seed is not None:
        common["lumix.seed"] = str(int(seed))

    saved: list[SavedFile] = []

    def emit(filename: str, content: "bytes | Callable[[str], None]", scene: int, name: Optional[str],
             fmt: str) -> None:
        path = os.path.join(folder, filename)
        if isinstance(content, bytes):
            write_bytes_atomically(path, content, overwrite=False)
        else:
            write_atomically(path, content, overwrite=False)
        saved.append(SavedFile(path, filename, subfolder, scene, name, fmt))

    for scene in range(count):
        stem = f"{base}_{counter:05d}_{scene:02d}"
        for name, batch in images.items():
            text = dict(extra_text or {})
            text.update(common, **{"lumix.map": name, "lumix.scene": str(scene)})
            if "png8" in wanted:
                data = encode_png(_png_pixels(name, batch[scene], 8), text, compress_level)
                emit(f"{stem}_{name}.png", data, scene, name, "png8")
            if "png16" in wanted and name in PNG16_MAPS:
                data = encode_png(_png_pixels(name, batch[scene], 16), text, compress_level)
                emit(f"{stem}_{name}_16bit.png", data, scene, name, "png16")
        if exr is not None:
            layers: dict[str, np.ndarray] = {}
            for name, batch in images.items():
                layers.update(_exr_layers(name, batch[scene]))
            header: dict[str, object] = dict(common, **{"lumix.scene": str(scene)})
            header["lumix.exr_encoding"] = json.dumps(exr_encoding(list(images)), sort_keys=True)
            emit(f"{stem}.exr", lambda p, L=layers, H=header: write_exr(p, L, H), scene, None, "exr")
    return saved


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

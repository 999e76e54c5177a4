"""LumiX adapter files: the released layout, our metadata, strict validation.

Keys (release and ours): ``{double_blocks|single_blocks}.{i}.processor.{kv_tt_lora|proj_tt_lora}.{G1|G2|G3}``.
Our files add safetensors metadata (``lumix.format``, ``lumix.modalities``, ``lumix.rank``,
``lumix.alpha``); a file without it is read as the release: the five maps in release
order, alpha = none. Unlike the released loader, which ignores mismatched keys, every key
and shape is checked and the first offending one is named.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..io.safetensors_io import CheckpointError, SafetensorsHeader, atomic_save, load_tensors, read_header
from ..maps import RELEASE, MapSet
from .adapter import AdapterSpec, LumiXAdapter

FORMAT_VERSION = "1"
META_FORMAT = "lumix.format"
META_MAPS = "lumix.modalities"
META_RANK = "lumix.rank"
META_ALPHA = "lumix.alpha"
#: How an adapter is meant to be sampled: flow matching over many steps (the release), or one
#: deterministic decomposition step (``lumix-train fit --objective one-step``). Absent = flow matching.
META_OBJECTIVE = "lumix.objective"
OBJECTIVE_FLOW_MATCHING = "flow-matching"
OBJECTIVE_ONE_STEP = "one-step"
OBJECTIVES = (OBJECTIVE_FLOW_MATCHING, OBJECTIVE_ONE_STEP)

#: safetensors dtypes a Tensor LoRA factor may be stored in (the trainer writes F32/BF16; F8 files are quantised).
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})

#: Largest |value| accepted in a factor. Trained factors are O(1) or smaller (G1 starts at N(0, 0.02²),
#: G2 at N(0, 1/(d R))); the three factors multiply, so anything near this bound already makes deltas
#: that swamp the FLUX activations. Larger values mean a broken export or a diverged training run.
MAX_ABS_FACTOR = 1e4

_KEY = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.processor\.(kv_tt_lora|proj_tt_lora)\.(G1|G2|G3)$")


@dataclass(frozen=True)
class ModelShape:
    """What an adapter must fit: a FLUX model's hidden size and block counts."""

    hidden: int
    double_blocks: int
    single_blocks: int


@dataclass(frozen=True)
class AdapterInfo:
    """What a file holds, read from its header alone."""

    path: Path
    spec: AdapterSpec
    num_tensors: int
    num_params: int
    is_release_layout: bool  # no lumix metadata: read as the release
    metadata: dict[str, str]


def _describe_foreign(path: Path, keys: list[str]) -> str:
    joined = " ".join(keys[:50])
    if any(k.startswith(("lora_unet_", "lora_te", "transformer.")) or ".lora_A." in k or ".lora_down." in k
           for k in keys):
        kind = "a standard LoRA, not a LumiX adapter; load it with ComfyUI's LoraLoader"
    elif "img_attn.qkv" in joined or "double_blocks.0.img_mod" in joined:
        kind = "a FLUX model, not a LumiX adapter; load it with UNETLoader"
    elif "input_blocks" in joined or "down_blocks" in joined or "joint_blocks" in joined:
        kind = "weights of a non-FLUX model (SD1.5/SDXL/SD3 layout); LumiX adapters are for FLUX.1 only"
    else:
        kind = "not a LumiX adapter"
    return (f"{path.name}: this file is {kind} (expected keys like "
            f"'double_blocks.0.processor.kv_tt_lora.G1'; found e.g. {keys[:3]})")


def inspect_adapter(path: "str | os.PathLike[str]") -> AdapterInfo:
    """Read an adapter file's layout from its header and check it is self-consistent."""
    header = read_header(path)
    return _info_from_header(header)


def _info_from_header(header: SafetensorsHeader) -> AdapterInfo:
    path = header.path
    keys = list(header.tensors)
    matched = {k: _KEY.match(k) for k in keys}
    if not keys or not any(matched.values()):
        raise CheckpointError(_describe_foreign(path, keys))
    extra = [k for k, m in matched.items() if m is None]
    if extra:
        raise CheckpointError(f"{path.name}: unexpected key '{extra[0]}' in a LumiX adapter file "
                              f"({len(extra)} unexpected keys); the file is not a clean LumiX adapter")
    # Shapes of a reference tensor give M, R and d.
    first = sorted(keys)[0]
    g1 = next((k for k in sorted(keys) if k.endswith(".G1")), None)
    g2p = next((k for k in sorted(keys) if k.endswith("proj_tt_lora.G2")), None)
    if g1 is None or g2p is None:
        raise CheckpointError(f"{path.name}: missing G1 or proj_tt_lora.G2 factors (first key '{first}')")
    not_float = next((k for k in keys if header.tensors[k].dtype not in FLOAT_DTYPES), None)
    if not_float is not None:
        raise CheckpointError(
            f"{path.name}: '{not_float}' is stored as {header.tensors[not_float].dtype}, but Tensor LoRA factors are "
            f"floating point ({', '.join(sorted(FLOAT_DTYPES))}); the file was not written by a LumiX trainer — "
            "export the adapter again (lumix_core.model.checkpoint.save_adapter)")
    M, M2, R = (header.tensors[g1].shape + (0, 0, 0))[:3]
    hidden = header.tensors[g2p].shape[1] if len(header.tensors[g2p].shape) == 4 else -1
    meta = header.metadata
    is_release = META_FORMAT not in meta
    if is_release:
        maps = RELEASE
        alpha = None
    else:
        if meta[META_FORMAT] != FORMAT_VERSION:
            raise CheckpointError(f"{path.name}: LumiX format version {meta[META_FORMAT]!r} is not one this pack "
                                  f"understands ({FORMAT_VERSION}); update comfyui-lumix")
        maps = _meta_maps(path, meta)
        alpha = _meta_alpha(path, meta)
        if META_RANK in meta and _meta_int(path, meta, META_RANK, "the rank, e.g. 8") != R:
            raise CheckpointError(f"{path.name}: metadata says rank {meta[META_RANK]} but '{g1}' has shape "
                                  f"{list(header.tensors[g1].shape)} (rank {R})")
    if M != maps.size:
        raise CheckpointError(
            f"{path.name}: '{g1}' has shape {list(header.tensors[g1].shape)}, i.e. {M} maps, but the file "
            + ("has no LumiX metadata and is read as the release with 5 maps "
               f"({RELEASE.to_string()})" if is_release else f"declares {maps.size} maps ({maps.to_string()})"))
    doubles = sorted({int(m.group(2)) for m in matched.values() if m.group(1) == "double_blocks"})
    singles = sorted({int(m.group(2)) for m in matched.values() if m.group(1) == "single_blocks"})
    spec = AdapterSpec(maps=maps, rank=R, hidden=hidden, double_blocks=tuple(doubles),
                       single_blocks=tuple(singles), alpha=alpha)
    expected = spec.expected_shapes()
    for key, shape in expected.items():
        if key not in header.tensors:
            raise CheckpointError(f"{path.name}: missing tensor '{key}' (expected shape {list(shape)})")
        got = header.tensors[key].shape
        if got != shape:
            raise CheckpointError(_shape_message(path, key, shape, got, spec))
    return AdapterInfo(path, spec, len(keys), header.num_params(), is_release, dict(meta))


def adapter_objective(info: AdapterInfo) -> str:
    """The objective an adapter was trained with (:data:`OBJECTIVES`); files without the key
    (the release, adapters of older trainers) are flow-matching adapters."""
    value = info.metadata.get(META_OBJECTIVE, OBJECTIVE_FLOW_MATCHING)
    if value not in OBJECTIVES:
        raise _bad_metadata(info.path, META_OBJECTIVE, value, " or ".join(OBJECTIVES))
    return value


def _bad_metadata(path: Path, key: str, value: str, expected: str) -> CheckpointError:
    return CheckpointError(f"{path.name}: metadata '{key}' is {value!r}, expected {expected}; fix that entry "
                           "(or export the adapter again with lumix_core.model.checkpoint.save_adapter)")


def _meta_int(path: Path, meta: dict[str, str], key: str, expected: str) -> int:
    try:
        return int(meta[key])
    except ValueError:
        raise _bad_metadata(path, key, meta[key], f"an integer ({expected})") from None


def _meta_alpha(path: Path, meta: dict[str, str]) -> Optional[float]:
    """``lumix.alpha``: 'none' or a positive finite number (it scales every delta; NaN would poison them all)."""
    text = meta.get(META_ALPHA, "none")
    if text.strip().lower() in ("", "none", "null"):
        return None
    try:
        alpha = float(text)
    except ValueError:
        raise _bad_metadata(path, META_ALPHA, text, "a positive number or 'none'") from None
    if not math.isfinite(alpha) or alpha <= 0:
        raise _bad_metadata(path, META_ALPHA, text, "a positive finite number or 'none'")
    return alpha


def _meta_maps(path: Path, meta: dict[str, str]) -> MapSet:
    text = meta.get(META_MAPS, RELEASE.to_string())
    try:
        return MapSet.parse(text)
    except (ValueError, KeyError) as e:
        raise _bad_metadata(path, META_MAPS, text, f"the adapter's map order, e.g. '{RELEASE.to_string()}' ({e})") \
            from None


def _check_values(path: Path, tensors: dict[str, torch.Tensor], order: list[str]) -> None:
    """Refuse NaN/inf or absurdly large factors, naming the first bad tensor (in block order)."""
    for key in order:
        values = tensors[key].detach().float()
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise CheckpointError(
                f"{path.name}: '{key}' holds {bad} NaN/inf value(s) of {values.numel()}; the file is damaged or "
                "was saved from a diverged training run — use another adapter file (an earlier checkpoint)")
        biggest = float(values.abs().max()) if values.numel() else 0.0
        if biggest > MAX_ABS_FACTOR:
            raise CheckpointError(
                f"{path.name}: '{key}' has values up to {biggest:.3g}, far beyond any trained Tensor LoRA factor "
                f"(limit {MAX_ABS_FACTOR:g}); the file is damaged or was saved from a diverged training run — use "
                "another adapter file (an earlier checkpoint)")


def _shape_message(path: Path, key: str, expected: tuple, got: tuple, spec: AdapterSpec) -> str:
    return (f"{path.name}: '{key}' has shape {list(got)}, expected {list(expected)} "
            f"(maps M={spec.num_maps}, rank R={spec.rank}, hidden d={spec.hidden})")


def check_fits(info: AdapterInfo, model: ModelShape, *, maps: Optional[MapSet] = None,
               rank: Optional[int] = None, require_all_blocks: bool = True) -> None:
    """Check an adapter against a model (and optionally a map set / rank); name the first mismatch."""
    spec, name = info.spec, info.path.name
    if spec.hidden != model.hidden:
        key = f"double_blocks.{spec.double_blocks[0]}.processor.kv_tt_lora.G2" if spec.double_blocks else "?"
        raise CheckpointError(
            f"{name}: adapter hidden size is {spec.hidden} but the model's is {model.hidden}: '{key}' has "
            f"shape {list(spec.factor_shape('kv_tt_lora', 'G2'))}, expected "
            f"{[spec.num_maps, model.hidden, spec.rank, spec.rank]}. This adapter was trained for another model.")
    for kind, have, n in (("double_blocks", spec.double_blocks, model.double_blocks),
                          ("single_blocks", spec.single_blocks, model.single_blocks)):
        beyond = [i for i in have if i >= n]
        if beyond:
            raise CheckpointError(f"{name}: adapter has '{kind}.{beyond[0]}' but the model has only {n} {kind} "
                                  f"(adapter covers {len(have)}); it was trained for another model")
        if require_all_blocks:
            missing = [i for i in range(n) if i not in have]
            if missing:
                raise CheckpointError(f"{name}: missing block '{kind}.{missing[0]}' (the model has {n} {kind}, "
                                      f"the file covers {len(have)}); the file is incomplete")
    if maps is not None and maps.names != spec.maps.names:
        raise CheckpointError(f"{name}: adapter maps are {spec.maps.to_string()} (M={spec.num_maps}), "
                              f"expected {maps.to_string()} (M={maps.size})")
    if rank is not None and rank != spec.rank:
        raise CheckpointError(f"{name}: adapter rank is {spec.rank}, expected {rank}")


def load_adapter(path: "str | os.PathLike[str]", model: Optional[ModelShape] = None, *,
                 maps: Optional[MapSet] = None, rank: Optional[int] = None,
                 device: "str | torch.device" = "cpu", dtype: Optional[torch.dtype] = None,
                 require_all_blocks: bool = True) -> LumiXAdapter:
    """Load and validate an adapter. Keeps the file's dtype unless ``dtype`` is given."""
    header = read_header(path)
    info = _info_from_header(header)
    if model is not None:
        check_fits(info, model, maps=maps, rank=rank, require_all_blocks=require_all_blocks)
    elif maps is not None or rank is not None:
        check_fits(info, ModelShape(info.spec.hidden, max(info.spec.double_blocks, default=-1) + 1,
                                    max(info.spec.single_blocks, default=-1) + 1),
                   maps=maps, rank=rank, require_all_blocks=False)
    from safetensors import SafetensorError

    try:
        tensors = load_tensors(header, device)
    except (SafetensorError, OSError) as e:  # the library's own errors do not name the file
        raise CheckpointError(f"{info.path.name}: the tensors cannot be read ({type(e).__name__}: {e}); the file is "
                              "damaged — download or export it again") from e
    _check_values(info.path, tensors, list(info.spec.expected_shapes()))
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    with torch.device("meta"):
        adapter = LumiXAdapter(info.spec)
    adapter.load_state_dict(tensors, strict=True, assign=True)
    return adapter


def adapter_metadata(adapter: LumiXAdapter) -> dict[str, str]:
    spec = adapter.spec
    return {META_FORMAT: FORMAT_VERSION, META_MAPS: spec.maps.to_string(), META_RANK: str(spec.rank),
            META_ALPHA: "none" if spec.alpha is None else repr(spec.alpha)}


def save_adapter(adapter: LumiXAdapter, path: "str | os.PathLike[str]", *, overwrite: bool = False,
                 extra_metadata: Optional[dict[str, str]] = None, dtype: Optional[torch.dtype] = None) -> Path:
    """Write an adapter with our metadata, atomically; refuses to replace a file unless asked.
    ``dtype``: store the factors in it (e.g. float16 to halve a shipped file; loaders cast back)."""
    meta = dict(extra_metadata or {})
    meta.update(adapter_metadata(adapter))
    tensors = adapter.state_dict()
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    return atomic_save(tensors, path, meta, overwrite=overwrite)

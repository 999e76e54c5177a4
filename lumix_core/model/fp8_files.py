"""Reading the fp8 FLUX files ComfyUI users have: which tensors are scales, and what is refused.

Accepted: weights stored as float8_e4m3fn without scales (``flux1-dev-fp8``), and ComfyUI's
scaled-fp8 files, where a weight's value is ``weight × scale`` with one scale per weight in
``<layer>.scale_weight`` (older files, often with a ``scaled_fp8`` marker key) or
``<layer>.weight_scale`` plus a ``<layer>.comfy_quant`` JSON (or ``_quantization_metadata``)
naming the format ``float8_e4m3fn``. Activation scales (``scale_input`` / ``input_scale``)
only matter to fp8 matrix products, which the trainer does not use; they are skipped.
Everything is checked from the header, before any weight is read.

Refused, with what to use instead: float8_e5m2 weights (2 mantissa bits), scales per channel
or per block, other quantization formats (int8, nvfp4, mxfp8 …) and non-float weights.
"""
from __future__ import annotations

import json
import math
from typing import Optional

import torch
from torch import Tensor

from ..io.safetensors_io import CheckpointError, SafetensorsHeader, load_tensors
from .fp8 import FP8, dequantize, quantize

#: ComfyUI's file-wide marker of scaled-fp8 files (its value says how ComfyUI multiplies; not needed here).
MARKER = "scaled_fp8"
#: Per-weight scale, older and newer ComfyUI spelling.
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
#: Activation scales of fp8 matrix products: skipped.
INPUT_SCALE_SUFFIXES = (".scale_input", ".input_scale")
QUANT_CONF_SUFFIX = ".comfy_quant"
QUANT_METADATA = "_quantization_metadata"
SUPPORTED_FORMAT = "float8_e4m3fn"
_WEIGHT_DTYPES = ("F32", "F16", "BF16", "F8_E4M3")
_SCALE_DTYPES = ("F32", "F16", "BF16")
_USE_INSTEAD = ("use the bf16 flux1-dev.safetensors (it can be stored as fp8 while it loads) or an fp8 file "
                "in float8_e4m3fn with one scale per weight")


def stored_scales(header: SafetensorsHeader, prefix: str) -> tuple[dict[str, str], set[str]]:
    """``({weight name: file key of its scale}, file keys that are not weights)`` for the tensors
    under ``prefix``; raises :class:`CheckpointError` for what the trainer cannot read.

    Weight names are without the prefix (``double_blocks.0.img_attn.qkv.weight``).
    """
    name = header.path.name
    scales: dict[str, str] = {}
    skipped: set[str] = set()
    conf_keys: list[str] = []
    bad_dtype: Optional[str] = None
    for key, info in header.tensors.items():
        if not key.startswith(prefix):
            continue
        inner = key[len(prefix):]
        if inner == MARKER or inner.endswith(INPUT_SCALE_SUFFIXES):
            skipped.add(key)
        elif inner.endswith(QUANT_CONF_SUFFIX):
            skipped.add(key)
            conf_keys.append(key)
        elif inner.endswith(SCALE_SUFFIXES):
            layer = next(inner[: -len(s)] for s in SCALE_SUFFIXES if inner.endswith(s))
            weight = f"{layer}.weight"
            if prefix + weight not in header.tensors:
                raise CheckpointError(f"{name}: '{key}' scales '{prefix + weight}', which the file does not have; "
                                      "the file is damaged or not a FLUX.1 transformer", _USE_INSTEAD)
            if math.prod(info.shape) != 1:
                raise CheckpointError(f"{name}: '{key}' has shape {list(info.shape)}: the trainer reads one scale "
                                      "per weight (shape [] or [1]), not one per channel or block", _USE_INSTEAD)
            if info.dtype not in _SCALE_DTYPES:
                raise CheckpointError(f"{name}: '{key}' is stored as {info.dtype}; a weight scale must be a float "
                                      f"({', '.join(_SCALE_DTYPES)})", _USE_INSTEAD)
            if weight in scales:
                raise CheckpointError(f"{name}: '{weight}' has two scales ({', '.join(SCALE_SUFFIXES)}); the file "
                                      "is damaged", _USE_INSTEAD)
            scales[weight] = key
            skipped.add(key)
        elif info.dtype == "F8_E5M2":
            raise CheckpointError(
                f"{name}: '{key}' is float8_e5m2, which the trainer does not read: e5m2 keeps 2 mantissa bits "
                "(up to 12.5 % error per weight), too coarse a base to train an adapter that is then used "
                "with other copies of FLUX", _USE_INSTEAD)
        elif info.dtype not in _WEIGHT_DTYPES and bad_dtype is None:
            bad_dtype = (f"{name}: '{key}' is stored as {info.dtype}; FLUX weights must be one of "
                         f"{', '.join(_WEIGHT_DTYPES)} (F8_E4M3 = float8_e4m3fn)")
    _check_formats(header, prefix, conf_keys)  # names the format, so before the plainer dtype message
    if bad_dtype is not None:
        raise CheckpointError(bad_dtype, _USE_INSTEAD)
    return scales, skipped


def _check_formats(header: SafetensorsHeader, prefix: str, conf_keys: list[str]) -> None:
    """Every layer ComfyUI marks as quantized must be in :data:`SUPPORTED_FORMAT`."""
    name = header.path.name
    layers: dict[str, object] = {}
    if QUANT_METADATA in header.metadata:
        try:
            declared = json.loads(header.metadata[QUANT_METADATA]).get("layers", {})
        except (ValueError, AttributeError):
            raise CheckpointError(f"{name}: its '{QUANT_METADATA}' metadata is not valid JSON", _USE_INSTEAD) from None
        layers.update({k: v for k, v in declared.items() if k.startswith(prefix)})
    for key, raw in load_tensors(header, "cpu", conf_keys).items():
        try:
            layers[key[: -len(QUANT_CONF_SUFFIX)]] = json.loads(raw.numpy().tobytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise CheckpointError(f"{name}: '{key}' is not the JSON ComfyUI writes there", _USE_INSTEAD) from None
    for layer, conf in layers.items():
        fmt = conf.get("format") if isinstance(conf, dict) else None
        if fmt != SUPPORTED_FORMAT:
            raise CheckpointError(f"{name}: '{layer}' is quantized as '{fmt}', which the trainer cannot read "
                                  f"(it reads {SUPPORTED_FORMAT} with one scale per weight)", _USE_INSTEAD)


def read_scales(header: SafetensorsHeader, scale_keys: dict[str, str]) -> dict[str, Tensor]:
    """``{weight name: float32 scale of shape []}`` on the CPU; a scale must be finite and > 0."""
    raw = load_tensors(header, "cpu", list(scale_keys.values()))
    scales = {}
    for weight, key in scale_keys.items():
        scale = raw[key].reshape(()).float()
        if not (math.isfinite(float(scale)) and float(scale) > 0):
            raise CheckpointError(f"{header.path.name}: '{key}' is {float(scale)}; a weight scale must be finite "
                                  "and > 0, so the file is damaged", _USE_INSTEAD)
        scales[weight] = scale
    return scales


def fp8_weight(tensor: Tensor, scale: Optional[Tensor], device: "str | torch.device",
               where: str) -> tuple[Tensor, Tensor]:
    """``(fp8 weight, float32 scale)`` on ``device``: fp8 tensors as they are (scale 1 where the file
    has none), others (``weight × scale`` where scaled) quantized on ``device``, one tensor at a time.
    ``where`` names the tensor in messages (``file: 'key'``)."""
    if tensor.dtype == FP8:
        return tensor.to(device), _scale_or_one(scale, device)
    value = tensor.to(device)
    if scale is not None:
        value = dequantize(value, scale.to(device), torch.float32)
    try:
        return quantize(value)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}", "download it again") from None


def plain_weight(tensor: Tensor, scale: Optional[Tensor], device: "str | torch.device",
                 dtype: Optional[torch.dtype]) -> Tensor:
    """The tensor's value in ``dtype`` on ``device`` (fp8 ones dequantized: bf16 when ``dtype`` is None)."""
    target = dtype or (torch.bfloat16 if tensor.dtype == FP8 else tensor.dtype)
    if tensor.dtype != FP8 and scale is None:
        return tensor.to(device=device, dtype=target)
    return dequantize(tensor.to(device), _scale_or_one(scale, device), target)


def _scale_or_one(scale: Optional[Tensor], device: "str | torch.device") -> Tensor:
    """A file's scale on ``device``, or 1 for an fp8 weight stored without one (``flux1-dev-fp8``)."""
    return (torch.ones((), dtype=torch.float32) if scale is None else scale).to(device)

"""Load and save FLUX.1 transformer weights for the reference :class:`~lumix_core.model.flux.Flux`.

Reads BFL files (``flux1-dev.safetensors``: keys ``double_blocks.0.img_attn.qkv.weight`` …)
and ComfyUI full checkpoints (the same keys behind ``model.diffusion_model.``). QK-norm
parameters are ``…_norm.scale`` in files and ``…_norm.weight`` in ComfyUI 0.33's memory; both
spellings are accepted. The config is inferred from tensor shapes (or read from our own
metadata), and the model is built on the meta device and filled by assignment so a 12 B
model is never allocated twice. Tensors are read one at a time on the CPU and converted on
their way to the device, so a bf16 file can be stored as fp8 on a card too small for it in
bf16; the fp8 files ComfyUI users have are read as :mod:`.fp8_files` describes.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import torch

from ..io.safetensors_io import CheckpointError, SafetensorsHeader, TensorInfo, atomic_save, iter_tensors, read_header
from .flux import FLUX_DEV, Flux, FluxConfig, tiny_config
from .fp8 import FP8, fp8_weight_names, quantize_flux_blocks_
from .fp8_files import fp8_weight, plain_weight, read_scales, stored_scales

log = logging.getLogger("lumix.model")

COMFY_PREFIX = "model.diffusion_model."
META_CONFIG = "lumix.flux_config"
_PROBE = "double_blocks.0.img_attn.qkv.weight"


def _strip(key: str, prefix: str) -> str:
    key = key[len(prefix):] if prefix and key.startswith(prefix) else key
    if key.endswith(("query_norm.weight", "key_norm.weight")):
        key = key[: -len("weight")] + "scale"
    return key


def detect_prefix(keys: "list[str] | set[str]") -> str:
    """``""`` for BFL files, ``"model.diffusion_model."`` for ComfyUI checkpoints; else a clear error."""
    keys = set(keys)
    for prefix in ("", COMFY_PREFIX):
        if prefix + _PROBE in keys:
            return prefix
    sample = sorted(keys)[:3]
    if any("input_blocks" in k or "joint_blocks" in k for k in keys):
        what = "an SD1.5/SDXL/SD3 model"
    elif any(".processor.kv_tt_lora." in k for k in keys):
        what = "a LumiX adapter (load it with the adapter loader, on top of a FLUX model)"
    elif any("distilled_guidance_layer" in k for k in keys):
        what = "a Chroma model (its blocks differ from FLUX.1)"
    elif any(k.startswith("transformer.transformer_blocks") or k.startswith("transformer_blocks") for k in keys):
        what = "a diffusers-format FLUX; convert it to the BFL/ComfyUI single-file format"
    else:
        what = "not a FLUX.1 transformer"
    raise CheckpointError(f"this file is {what}: no '{_PROBE}' (found e.g. {sample})")


def infer_config(tensors: dict[str, TensorInfo], metadata: Optional[dict[str, str]] = None) -> FluxConfig:
    """FLUX config from (prefix-stripped) tensor shapes; our own files carry it in metadata."""
    if metadata and META_CONFIG in metadata:
        return FluxConfig.from_dict(json.loads(metadata[META_CONFIG]))

    def shape(key: str) -> tuple[int, ...]:
        if key not in tensors:
            raise CheckpointError(f"FLUX weights lack '{key}'; the file is incomplete or not FLUX.1")
        return tensors[key].shape

    hidden, in_channels = shape("img_in.weight")
    head = shape("double_blocks.0.img_attn.norm.query_norm.scale")[0]
    depth = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("double_blocks."))
    singles = [int(k.split(".")[1]) for k in tensors if k.startswith("single_blocks.")]
    if hidden == FLUX_DEV.hidden_size and head == FLUX_DEV.hidden_size // FLUX_DEV.num_heads:
        axes = FLUX_DEV.axes_dim
    else:
        axes = tiny_config(hidden, hidden // head).axes_dim
    return FluxConfig(
        in_channels=in_channels,
        out_channels=shape("final_layer.linear.weight")[0],
        vec_in_dim=shape("vector_in.in_layer.weight")[1],
        context_in_dim=shape("txt_in.weight")[1],
        hidden_size=hidden,
        mlp_ratio=shape("double_blocks.0.img_mlp.0.weight")[0] / hidden,
        num_heads=hidden // head,
        depth=depth,
        depth_single_blocks=1 + max(singles) if singles else 0,
        axes_dim=axes,
        qkv_bias="double_blocks.0.img_attn.qkv.bias" in tensors,
        guidance_embed="guidance_in.in_layer.weight" in tensors,
    )


def read_flux_header(path: "str | os.PathLike[str]") -> tuple[SafetensorsHeader, str, FluxConfig]:
    header = read_header(path)
    try:
        prefix = detect_prefix(header.tensors)
    except CheckpointError as e:
        raise CheckpointError(f"{Path(path).name}: {e}") from None
    stripped = {_strip(k, prefix): v for k, v in header.tensors.items() if k.startswith(prefix)}
    return header, prefix, infer_config(stripped, header.metadata)


def load_flux(path: "str | os.PathLike[str]", *, device: "str | torch.device" = "cpu",
              dtype: Optional[torch.dtype] = None, fp8: bool = False) -> Flux:
    """Load a BFL- or ComfyUI-format FLUX.1 file into the reference model (strict keys).

    ``fp8``: the linears of the blocks become :class:`~lumix_core.model.fp8.Fp8Linear` (fp8
    weights kept as stored, others quantized on ``device``); every other tensor is in ``dtype``.
    Without it, fp8 weights are dequantized to ``dtype`` (bf16 if None): the values an
    ``Fp8Linear`` computes with, in more memory. Dequantized rather than refused because a card
    that holds the bf16 model may as well train on the fp8 file a user already has.
    """
    header, prefix, config = read_flux_header(path)
    scale_keys, skipped = stored_scales(header, prefix)
    scales = read_scales(header, scale_keys)
    with torch.device("meta"):
        model = Flux(config)
    if fp8:
        quantize_flux_blocks_(model, values=False)
    fp8_names = fp8_weight_names(model)
    state, dequantized = {}, 0
    keys = [k for k in header.tensors if k.startswith(prefix) and k not in skipped]
    for key, tensor in iter_tensors(header, keys):  # one tensor on the CPU at a time
        name = _strip(key, prefix)
        if name in fp8_names:
            state[name], state[name[: -len("weight")] + "scale_weight"] = fp8_weight(
                tensor, scales.get(name), device, f"{Path(path).name}: '{key}'")
        else:
            if tensor.dtype == FP8 and not fp8:
                dequantized += 1
            state[name] = plain_weight(tensor, scales.get(name), device, dtype)
    if dequantized:
        log.warning("%s: %d fp8 weights dequantized to %s (the values fp8 storage computes with, in more memory)",
                    Path(path).name, dequantized, dtype or torch.bfloat16)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise CheckpointError(f"{Path(path).name}: FLUX weights do not match the inferred config ({what}; "
                              f"{len(missing)} missing, {len(unexpected)} unexpected)")
    return model.eval().requires_grad_(False)


def save_flux(model: Flux, path: "str | os.PathLike[str]", *, comfy_prefix: bool = False,
              overwrite: bool = False) -> Path:
    """Write the model in BFL layout (or with ComfyUI's prefix), its config in the metadata."""
    prefix = COMFY_PREFIX if comfy_prefix else ""
    state = {prefix + k: v for k, v in model.state_dict().items()}
    return atomic_save(state, path, {META_CONFIG: json.dumps(model.config.to_dict())}, overwrite=overwrite)

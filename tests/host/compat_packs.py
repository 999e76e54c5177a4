"""Other node packs beside LumiX in a real ComfyUI (COMFYUI_PATH): finding them, loading them as
ComfyUI does, and the tiny FLUX in the file formats they read.

The packs are neither ours nor vendored. The tests look for them in ``$LUMIX_COMPAT_PACKS`` (a folder
holding them) or else ``$COMFYUI_PATH/custom_nodes``, and skip with the reason (and where to put the
pack) when one is absent or does not import on this ComfyUI; docs/compatibility.md says how to fetch them.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Optional

import lumix_host as H  # skips the module without COMFYUI_PATH
import numpy as np
import pytest
import torch

# isort: split
import comfy.model_detection  # noqa: E402
import comfy.sample  # noqa: E402

#: name -> (folder, repository): the packs these tests know, as their folders are named in custom_nodes.
PACKS = {
    "gguf": ("ComfyUI-GGUF", "city96/ComfyUI-GGUF"),
    "teacache": ("ComfyUI-TeaCache", "welltop-cn/ComfyUI-TeaCache"),
    "wavespeed": ("Comfy-WaveSpeed", "chengzeyi/Comfy-WaveSpeed"),
}

#: FLUX tensors city96's patched llama-quantize keeps unquantized (``tools/lcpp.patch``, LLM_ARCH_FLUX).
GGUF_KEEP_FLUX = ("txt_in.", "img_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.")
#: Tensors of at most this many values stay F32 (``tools/convert.py``, QUANTIZATION_THRESHOLD).
GGUF_SMALL = 1024
#: Layers of the tiny FLUX the random LoRA adapts: image and text streams, attention, MLP and modulation.
LORA_LAYERS = ("double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "double_blocks.0.img_mlp.0",
               "double_blocks.0.txt_attn.qkv", "double_blocks.0.img_mod.lin", "single_blocks.0.linear1",
               "single_blocks.0.linear2")
LORA_RANK, LORA_ALPHA, LORA_STRENGTH = 4, 2.0, 0.8

POS, NEG = H.conditioning(1), H.conditioning(2)

_LOADED: dict = {}


def packs_dir() -> Path:
    return Path(os.environ.get("LUMIX_COMPAT_PACKS") or Path(H.COMFYUI_PATH) / "custom_nodes")


def other_pack(name: str, needs: tuple[str, ...] = ()) -> dict:
    """The node classes of pack ``name`` (see :data:`PACKS`), loaded once with ComfyUI's ``load_custom_node``.

    Skips the calling test, saying why, when the pack's folder is absent, a Python package it imports
    (``needs``) is not installed, or ComfyUI fails to import it.
    """
    folder, repo = PACKS[name]
    path = packs_dir() / folder
    if not path.is_dir():
        pytest.skip(f"{folder} is not in {packs_dir()}: clone https://github.com/{repo} there "
                    "(or point LUMIX_COMPAT_PACKS at a folder holding it); see docs/compatibility.md")
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{folder} needs the Python package(s) {missing}: pip install them into this ComfyUI's Python")
    if name not in _LOADED:
        _LOADED[name] = _load_custom_node(path)
    ok, classes, error = _LOADED[name]
    if not ok:
        pytest.skip(f"{folder} does not import on this ComfyUI ({H.COMFYUI_PATH}): {error}")
    return classes


def _load_custom_node(path: Path) -> tuple[bool, dict, str]:
    """:func:`lumix_host.load_custom_node` on ``path``, plus the import error ComfyUI logged."""
    errors: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and record.exc_info[1] is not None:
                errors.append(f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}")
            elif record.levelno >= logging.WARNING:
                errors.append(record.getMessage().strip().splitlines()[-1])

    grab = Grab()
    logging.getLogger().addHandler(grab)
    try:
        ok, added = H.load_custom_node(path)
    finally:
        logging.getLogger().removeHandler(grab)
    return ok, added, (errors[-1] if errors else "see the log")


def tiny_flux_detection(monkeypatch: Any) -> None:
    """Let ComfyUI's model detection recognise the tiny FLUX in a file.

    Its FLUX branch hard-codes FLUX.1's widths (0.3.54: hidden 3072, 24 heads; 0.33: heads from
    128-wide axes); for a state dict of the tiny width the detected config gets the tiny
    :data:`lumix_host.TINY_FLUX` sizes instead. Everything else (the loaders, ops, patchers) is the host's.
    """
    tiny = H.tiny_flux_config()
    original = comfy.model_detection.detect_unet_config

    def detect(state_dict: dict, key_prefix: str, *args: Any, **kwargs: Any) -> Optional[dict]:
        config = original(state_dict, key_prefix, *args, **kwargs)
        img_in = state_dict.get(f"{key_prefix}img_in.weight")
        if config and config.get("image_model") == "flux" and img_in is not None and img_in.shape[0] == H.HIDDEN:
            config = dict(config, **tiny)
        return config

    monkeypatch.setattr(comfy.model_detection, "detect_unet_config", detect)


def flux_file_state_dict(patcher: Any) -> dict:
    """The diffusion model's weights under the key names of a FLUX file (QK norms as ``…_norm.scale``)."""
    sd = patcher.model.diffusion_model.state_dict()
    return {(k[:-len(".weight")] + ".scale" if k.endswith("_norm.weight") else k): v.detach().clone()
            for k, v in sd.items()}


def gguf_type(key: str, tensor: torch.Tensor, quant: Any) -> Any:
    """The GGML type city96's tools give ``key`` of an fp32 FLUX: 1-D and small tensors F32, the
    embedders and final layer F16, other 2-D weights ``quant`` (F16 for an F16 file)."""
    import gguf

    if tensor.ndim == 1 or tensor.numel() <= GGUF_SMALL:
        return gguf.GGMLQuantizationType.F32
    if tensor.ndim != 2 or any(k in key for k in GGUF_KEEP_FLUX):
        return gguf.GGMLQuantizationType.F16
    return quant


def write_gguf(path: Path, sd: dict, quant: Any) -> Path:
    """``sd`` as a ``.gguf`` laid out like ``tools/convert.py`` (arch ``flux``, the state dict's own tensor
    names, quantization version, file type) + llama-quantize for ``quant`` (Q8_0, Q4_0: rows of 32)."""
    import gguf

    writer = gguf.GGUFWriter(path=None, arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    file_types = {gguf.GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16,
                  gguf.GGMLQuantizationType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
                  gguf.GGMLQuantizationType.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0}
    writer.add_file_type(file_types[quant])
    for key, tensor in sd.items():
        qtype = gguf_type(key, tensor, quant)
        writer.add_tensor(key, gguf.quants.quantize(tensor.float().numpy(), qtype), raw_dtype=qtype)
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_weights(path: Path) -> dict:
    """The weights of a ``.gguf`` as float32 tensors, dequantized by the ``gguf`` package's reference code.

    Quantized blocks are ``d * q`` with an fp16 scale ``d``; ComfyUI-GGUF's default dequantization
    multiplies in fp16, so its weights are these products rounded to fp16: the same rounding is applied here.
    """
    import gguf

    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        shape = tuple(int(n) for n in reversed(t.shape))
        w = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type))).reshape(shape)
        quantized = t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
        out[t.name] = (w.half() if quantized else w).float()
    return out


def random_lora(model: Any, seed: int = 0) -> dict:
    """{layer: (up [out, R], down [R, in])} for :data:`LORA_LAYERS` of ``model``, large enough to matter."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in LORA_LAYERS:
        w = model.model.diffusion_model.get_submodule(layer).weight
        up, down = torch.randn(w.shape[0], LORA_RANK, generator=g), torch.randn(LORA_RANK, w.shape[1], generator=g)
        out[layer] = (0.3 * up, 0.3 * down)
    return out


def lora_delta(up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """What the LoRA adds to a weight at :data:`LORA_STRENGTH`: strength * alpha / rank * up @ down."""
    return (LORA_STRENGTH * (LORA_ALPHA / LORA_RANK)) * (up @ down)


def merged_flux(seed: int, lora: dict) -> Any:
    """The tiny FLUX of ``seed`` with ``lora`` added into its weights by hand: the truth a loaded LoRA must match."""
    model = H.tiny_flux(seed=seed)
    with torch.no_grad():
        for layer, (up, down) in lora.items():
            model.model.diffusion_model.get_submodule(layer).weight += lora_delta(up, down)
    return model


def write_lora(folder: Path, lora: dict) -> str:
    """``lora`` as a kohya-format FLUX LoRA file (``lora_unet_…`` keys, with alpha) in ``folder``, registered
    as a ComfyUI ``loras`` folder; returns the name LoraLoaderModelOnly takes."""
    import folder_paths
    from safetensors.torch import save_file

    sd = {}
    for layer, (up, down) in lora.items():
        key = "lora_unet_" + layer.replace(".", "_")
        sd.update({f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down,
                   f"{key}.alpha": torch.tensor(LORA_ALPHA)})
    save_file(sd, str(folder / "tiny_flux_lora.safetensors"))
    folder_paths.add_model_folder_path("loras", str(folder))
    return "tiny_flux_lora.safetensors"


def with_lora(model: Any, name: str) -> Any:
    """Core LoraLoaderModelOnly at :data:`LORA_STRENGTH`."""
    import nodes

    return nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, LORA_STRENGTH)[0]


def sample(model: Any, latent: dict, *, seed: int = 0, steps: int = 4, cfg: float = 2.0) -> torch.Tensor:
    """``comfy.sample.sample`` (euler, simple) with the shared tiny conditioning, as KSampler runs it."""
    samples = latent["samples"]
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", POS, NEG, samples,
                                   disable_pbar=True, seed=seed)


def diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max |b|)."""
    d = (a - b).abs().max().item()
    return d, d / max(b.abs().max().item(), 1e-30)

"""FLUX.1-dev on a GPU: plain FLUX, batch 5, vs LumiX, 5 maps — seconds per step and peak VRAM.

Builds the full FLUX.1-dev architecture (hidden 3072, 24 heads, 19 double + 38 single blocks)
with random weights, nothing downloaded: through ComfyUI's classes when ``COMFYUI_PATH`` is set
(``comfy.supported_models.Flux`` set up as UNETLoader does, patched by our Load Adapter node
with a random release-shaped adapter), else :mod:`lumix_core.model.flux` with the adapter attached.
Weights in bf16 and in fp8 (e4m3fn storage, as UNETLoader's ``weight_dtype``; computed in the
dtype the host picks, bf16 on a GPU). One step is one model call: text mode with CFG is 2 chunks
(cond + uncond stacked by ComfyUI, batch 10), photo mode 1 chunk (batch 5, the color map at
t = 0); 512 text tokens; 512² and 1024² images. Prints both variants side by side (interleaved
repeats, median), their ratio, and the absolute figures.

Without a GPU it runs a tiny FLUX at a tiny size as a smoke test (CI runs it that way); the
figures it prints then say nothing about a GPU.

    python bench/bench_gpu.py [--sizes 512 1024] [--dtypes bf16 fp8] [--repeats 5]
    COMFYUI_PATH=~/ComfyUI python bench/bench_gpu.py
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _comfy  # noqa: E402
from _measure import LiveTensorBytes, interleaved_times  # noqa: E402

from lumix_core.latents import image_ids  # noqa: E402
from lumix_core.maps import RELEASE  # noqa: E402
from lumix_core.model.adapter import LumiXAdapter, default_spec  # noqa: E402
from lumix_core.model.checkpoint import save_adapter  # noqa: E402
from lumix_core.model.flux import FLUX_DEV, Flux, FluxConfig, tiny_config  # noqa: E402
from lumix_core.model.fp8 import replace_linears_  # noqa: E402

M = RELEASE.size
MODES = {"text": 2, "photo": 1}  # chunks per model call
WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
TINY = tiny_config(hidden_size=64, num_heads=2, depth=1, depth_single_blocks=1, in_channels=64,
                   context_in_dim=32, vec_in_dim=16)


class Fp8Linear(nn.Module):
    """A Linear whose weight is stored in fp8 and cast to the input's dtype per call (ComfyUI's manual cast)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.weight.to(x.dtype), bias)


def store_linears_as(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    replace_linears_(model, lambda linear: Fp8Linear(linear, dtype))
    return model


def random_adapter(config: FluxConfig, device: torch.device) -> LumiXAdapter:
    """A release-shaped adapter (rank 8, every block) in float32 like the released file, non-zero G3."""
    spec = default_spec(rank=8, hidden=config.hidden_size, double_blocks=config.depth,
                        single_blocks=config.depth_single_blocks)
    adapter = LumiXAdapter(spec, device=device)
    adapter.reset_parameters()
    with torch.no_grad():
        for lora in adapter.tensor_loras():
            lora.G3.normal_(0, 0.02)
    return adapter.requires_grad_(False)


Step = Callable[[], object]


def core_steps(config: FluxConfig, weight_dtype: torch.dtype, device: torch.device, side: int, txt_tokens: int,
               chunks: int) -> tuple[Step, Step]:
    """Plain and LumiX model calls of ``lumix_core.model.flux.Flux`` (packed tokens, ``side x side`` of them)."""
    compute = torch.bfloat16
    previous = torch.get_default_dtype()
    torch.set_default_dtype(compute)
    try:
        with torch.device(device):
            model = Flux(config).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)
    if weight_dtype != compute:
        store_linears_as(model, weight_dtype)
    adapter = random_adapter(config, device)
    B = M * chunks
    g = torch.Generator(device=device).manual_seed(0)
    img = torch.randn(B, side * side, config.in_channels, generator=g, device=device, dtype=compute)
    txt = torch.randn(B, txt_tokens, config.context_in_dim, generator=g, device=device, dtype=compute)
    img_ids, txt_ids = image_ids(B, 2 * side, 2 * side).to(device), torch.zeros(B, txt_tokens, 3, device=device)
    t = torch.rand(B, device=device)
    if chunks == 1:
        t[RELEASE.query_index::M] = 0.0  # photo mode: the color map is fed clean
    y = torch.randn(B, config.vec_in_dim, device=device, dtype=compute)
    guidance = torch.full((B,), 3.5, device=device)

    def plain():
        return model(img, img_ids, txt, txt_ids, t, y, guidance)

    def lumix():
        with model.attached(adapter):
            return plain()

    return plain, lumix


def comfy_params(config: FluxConfig) -> dict:
    return dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=config.vec_in_dim,
                context_in_dim=config.context_in_dim, hidden_size=config.hidden_size, mlp_ratio=config.mlp_ratio,
                num_heads=config.num_heads, depth=config.depth, depth_single_blocks=config.depth_single_blocks,
                axes_dim=list(config.axes_dim), theta=config.theta, patch_size=2, qkv_bias=config.qkv_bias,
                guidance_embed=config.guidance_embed, txt_ids_dims=[])


def comfy_steps(pack: dict, config: FluxConfig, weight_dtype: torch.dtype, device: torch.device, side: int,
                txt_tokens: int, chunks: int) -> tuple[Step, Step]:
    """Plain and Load-Adapter-patched ComfyUI FLUX, called as the samplers call it (``apply_model``)."""
    plain = _comfy.flux_model(comfy_params(config), weight_dtype, device)
    adapter_file = save_adapter(random_adapter(config, torch.device("cpu")),
                                Path(tempfile.mkdtemp()) / "bench_gpu_adapter.safetensors")
    patched = pack["LumiXLoadAdapter"]().load(plain, str(adapter_file), 1.0)[0]
    B = M * chunks
    dtype = plain.model.get_dtype() if plain.model.manual_cast_dtype is None else plain.model.manual_cast_dtype
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(B, 16, 2 * side, 2 * side, generator=g, device=device)
    sigma = torch.rand(B, device=device)
    if chunks == 1:
        sigma[RELEASE.query_index::M] = 0.0
    ctx = torch.randn(B, txt_tokens, config.context_in_dim, device=device, dtype=dtype)
    kw = dict(y=torch.randn(B, config.vec_in_dim, device=device, dtype=dtype),
              guidance=torch.full((B,), 3.5, device=device))

    def call(patcher):
        options = copy.copy(patcher.model_options.get("transformer_options", {}))
        return lambda: patcher.model.apply_model(x, sigma, c_crossattn=ctx, transformer_options=options, **kw)

    return call(plain), call(patched)


def measure(steps: dict[str, Step], device: torch.device, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per call (interleaved) and peak memory per call: CUDA allocated bytes, else live tensor bytes."""
    def synced(fn: Step) -> Step:
        def run():
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out
        return run

    with torch.no_grad():
        times = interleaved_times({k: synced(f) for k, f in steps.items()}, repeats=repeats,
                                  clock=time.perf_counter)
        peaks = {}
        for name, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                synced(fn)()
                peaks[name] = torch.cuda.max_memory_allocated(device)
            else:
                peaks[name] = LiveTensorBytes().measure(fn)
    return times, peaks


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="image sizes in pixels (GPU)")
    ap.add_argument("--dtypes", nargs="+", default=list(WEIGHT_DTYPES), choices=list(WEIGHT_DTYPES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--txt-tokens", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    smoke = device.type != "cuda"
    if smoke:
        torch.set_num_threads(1)
        config, sizes, txt_tokens, repeats = TINY, [32], 8, 1
        print("no GPU: tiny FLUX at 32x32 pixels as a smoke test; these figures say nothing about a GPU")
    else:
        config, sizes, txt_tokens, repeats = FLUX_DEV, a.sizes, a.txt_tokens, a.repeats
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    host = "ComfyUI" if _comfy.comfyui_path() else "lumix_core.model.flux"
    pack = None
    if _comfy.comfyui_path():
        _comfy.import_comfy(cpu=smoke)
        pack = _comfy.load_pack()
    print(f"{host}: FLUX hidden {config.hidden_size}, {config.num_heads} heads, {config.depth}+"
          f"{config.depth_single_blocks} blocks; plain FLUX batch {M}xchunks vs LumiX {M} maps xchunks; "
          f"{txt_tokens} text tokens; median of {repeats}")
    print(f"{'weights':7} {'size':>5} {'mode':5} {'batch':>5} {'plain s/it':>11} {'lumix s/it':>11} {'ratio':>6} "
          f"{'plain peak':>11} {'lumix peak':>11} {'ratio':>6}")
    for dname in a.dtypes:
        for size in sizes:
            side = size // 16  # VAE /8, then 2x2 patches
            for mode, chunks in MODES.items():
                if pack is not None:
                    plain, lumix = comfy_steps(pack, config, WEIGHT_DTYPES[dname], device, side, txt_tokens, chunks)
                else:
                    plain, lumix = core_steps(config, WEIGHT_DTYPES[dname], device, side, txt_tokens, chunks)
                times, peaks = measure({"plain": plain, "lumix": lumix}, device, repeats)
                print(f"{dname:7} {size:5d} {mode:5} {M * chunks:5d} {times['plain']:10.3f}s {times['lumix']:10.3f}s "
                      f"{times['lumix'] / times['plain']:5.2f}x {gib(peaks['plain']):>11} {gib(peaks['lumix']):>11} "
                      f"{peaks['lumix'] / peaks['plain']:5.2f}x")
                del plain, lumix
                if device.type == "cuda":
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Dispatched aten operations of one FLUX model call: plain vs patched with LumiX.

On a GPU every dispatched operation costs a kernel launch or a dispatcher round trip
(~5-10 µs), whatever its size, so a LumiX block must add a small, constant number of them:
independent of the head count and of the number of scene groups in the batch. This counts
them with a ``TorchDispatchMode`` for a 2 double + 2 single block FLUX (hidden 384, tiny
token counts: the count does not depend on sizes) at 2 and 24 heads (FLUX.1-dev has 24) and
1, 2 and 4 groups of 5 maps (2 groups = one scene under CFG):

* ``lumix_core.model.flux.Flux`` plain vs with the adapter attached;
* with ``COMFYUI_PATH`` set, ComfyUI's FLUX (``comfy.supported_models.Flux``) plain vs
  patched through our Load Adapter node, the model called as the samplers call it.

    python bench/bench_dispatch.py [--detail]
    COMFYUI_PATH=~/ComfyUI python bench/bench_dispatch.py
"""
from __future__ import annotations

import argparse
import collections
import copy
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _comfy  # noqa: E402
from _measure import count_dispatches  # noqa: E402

from lumix_core.latents import image_ids  # noqa: E402
from lumix_core.maps import RELEASE  # noqa: E402
from lumix_core.model.adapter import LumiXAdapter, default_spec  # noqa: E402
from lumix_core.model.checkpoint import save_adapter  # noqa: E402
from lumix_core.model.flux import Flux, tiny_config  # noqa: E402

HIDDEN, DOUBLE, SINGLE, RANK = 384, 2, 2, 8
HEADS, GROUPS = (2, 24), (1, 2, 4)
CONTEXT, POOLED, TXT, SIDE = 32, 16, 8, 4  # SIDE x SIDE image tokens
M = RELEASE.size
TARGET = 1.3

Counts = collections.Counter


def random_adapter(seed: int = 0) -> LumiXAdapter:
    """Published init plus a non-zero G3 (the counts do not depend on the values)."""
    adapter = LumiXAdapter(default_spec(rank=RANK, hidden=HIDDEN, double_blocks=DOUBLE, single_blocks=SINGLE))
    g = torch.Generator().manual_seed(seed)
    adapter.reset_parameters(g)
    with torch.no_grad():
        for lora in adapter.tensor_loras():
            lora.G3.copy_(torch.randn(lora.G3.shape, generator=g) * 0.02)
    return adapter.requires_grad_(False)


def _count_pair(plain: Callable[[], object], lumix: Callable[[], object]) -> tuple[Counts, Counts]:
    with torch.no_grad():
        plain(), lumix()  # warm-up: first calls may build caches
        return count_dispatches(plain), count_dispatches(lumix)


def core_counts(heads: int, groups: int, adapter: LumiXAdapter) -> tuple[Counts, Counts]:
    """Plain vs LumiX call of ``lumix_core.model.flux.Flux``."""
    torch.manual_seed(0)
    model = Flux(tiny_config(hidden_size=HIDDEN, num_heads=heads, depth=DOUBLE, depth_single_blocks=SINGLE,
                             in_channels=16, context_in_dim=CONTEXT, vec_in_dim=POOLED)).eval().requires_grad_(False)
    B = groups * M
    img, txt = torch.randn(B, SIDE * SIDE, 16), torch.randn(B, TXT, CONTEXT)
    img_ids, txt_ids = image_ids(B, 2 * SIDE, 2 * SIDE), torch.zeros(B, TXT, 3)
    t, y, guidance = torch.rand(B), torch.randn(B, POOLED), torch.full((B,), 3.5)

    def call():
        return model(img, img_ids, txt, txt_ids, t, y, guidance)

    def lumix():
        with model.attached(adapter):
            return call()

    return _count_pair(call, lumix)


def comfy_params(heads: int) -> dict:
    axes = tiny_config(hidden_size=HIDDEN, num_heads=heads).axes_dim
    return dict(image_model="flux", in_channels=4, out_channels=4, vec_in_dim=POOLED, context_in_dim=CONTEXT,
                hidden_size=HIDDEN, mlp_ratio=4.0, num_heads=heads, depth=DOUBLE, depth_single_blocks=SINGLE,
                axes_dim=list(axes), theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[])


def comfy_counts(pack: dict, adapter_file: Path, heads: int, groups: int) -> tuple[Counts, Counts]:
    """Plain vs Load-Adapter-patched ComfyUI FLUX, called like the samplers call it (``apply_model``)."""
    plain = _comfy.flux_model(comfy_params(heads), torch.float32, torch.device("cpu"))
    patched = pack["LumiXLoadAdapter"]().load(plain, str(adapter_file), 1.0)[0]
    B = groups * M
    x = torch.randn(B, 4, 2 * SIDE, 2 * SIDE)
    sigma, ctx = torch.rand(B), torch.randn(B, TXT, CONTEXT)
    kw = dict(y=torch.randn(B, POOLED), guidance=torch.full((B,), 3.5))

    def call(patcher):
        options = copy.copy(patcher.model_options.get("transformer_options", {}))
        return lambda: patcher.model.apply_model(x, sigma, c_crossattn=ctx, transformer_options=options, **kw)

    return _count_pair(call(plain), call(patched))


def table(name: str, rows: dict[tuple[int, int], tuple[Counts, Counts]], detail: bool) -> bool:
    print(f"\n{name}: dispatched aten operations of one model call ({DOUBLE} double + {SINGLE} single blocks)")
    print(f"{'heads':>5} {'groups':>6} {'plain':>7} {'lumix':>7} {'ratio':>7}  per block added")
    ok = True
    for (h, g), (plain, lumix) in rows.items():
        p, q = sum(plain.values()), sum(lumix.values())
        ok &= q <= TARGET * p
        print(f"{h:5d} {g:6d} {p:7d} {q:7d} {q / p:6.2f}x  {(q - p) / (DOUBLE + SINGLE):6.1f}")
        if detail:
            extra = {k: lumix[k] - plain[k] for k in set(lumix) | set(plain) if lumix[k] != plain[k]}
            print("             " + ", ".join(f"{k} {v:+d}" for k, v in sorted(extra.items(), key=lambda kv: -kv[1])))
    return ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detail", action="store_true", help="list the operations LumiX adds, by name")
    a = ap.parse_args()
    torch.set_num_threads(1)
    adapter = random_adapter()
    cases = [(h, g) for h in HEADS for g in GROUPS]
    ok = table("lumix_core.model.flux", {c: core_counts(*c, adapter) for c in cases}, a.detail)
    if _comfy.comfyui_path():
        _comfy.import_comfy(cpu=True)
        pack = _comfy.load_pack()
        adapter_file = save_adapter(adapter, Path(tempfile.mkdtemp()) / "bench_adapter.safetensors")
        ok &= table(f"ComfyUI ({_comfy.comfyui_path()}) through LumiX Load Adapter",
                    {c: comfy_counts(pack, adapter_file, *c) for c in cases}, a.detail)
    else:
        print("\n(COMFYUI_PATH not set: ComfyUI's model not measured)")
    print(f"\ntarget: every ratio <= {TARGET}x -> {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()

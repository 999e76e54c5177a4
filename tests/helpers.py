"""Shared builders for the core tests: tiny FLUX blocks, inputs and non-zero adapters."""
from __future__ import annotations

import torch

from lumix_core.latents import image_ids
from lumix_core.maps import RELEASE, MapSet
from lumix_core.model.adapter import LumiXAdapter, default_spec
from lumix_core.model.flux import DoubleStreamBlock, EmbedND, Flux, SingleStreamBlock, tiny_config

D, HEADS = 64, 2


def randomize_(adapter: LumiXAdapter, seed: int = 0, g3_scale: float = 0.5) -> LumiXAdapter:
    """Published init for G1/G2 plus a non-zero G3 (a fresh adapter is a no-op)."""
    g = torch.Generator().manual_seed(seed)
    adapter.reset_parameters(g)
    with torch.no_grad():
        for lora in adapter.tensor_loras():
            lora.G1.copy_(torch.randn(lora.G1.shape, generator=g) * 0.5)
            lora.G3.copy_(torch.randn(lora.G3.shape, generator=g) * g3_scale)
    return adapter


def tiny_flux(seed: int = 0, **kw) -> Flux:
    torch.manual_seed(seed)
    model = Flux(tiny_config(hidden_size=D, num_heads=HEADS, **kw)).eval()
    with torch.no_grad():  # modulation weights are small at init; make the blocks do something
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def tiny_adapter(model: Flux, maps: MapSet = RELEASE, rank: int = 4, seed: int = 0, alpha=None) -> LumiXAdapter:
    c = model.config
    spec = default_spec(maps=maps, rank=rank, hidden=c.hidden_size, double_blocks=c.depth,
                        single_blocks=c.depth_single_blocks, alpha=alpha)
    return randomize_(LumiXAdapter(spec), seed)


def block_adapter(maps: MapSet = RELEASE, seed: int = 0) -> LumiXAdapter:
    """A rank-4 adapter for one double and one single block of :func:`blocks`' width."""
    return randomize_(LumiXAdapter(default_spec(maps=maps, rank=4, hidden=D, double_blocks=1, single_blocks=1)), seed)


def blocks(seed: int = 0):
    torch.manual_seed(seed)
    double, single = DoubleStreamBlock(D, HEADS, 4.0, True).eval(), SingleStreamBlock(D, HEADS, 4.0).eval()
    with torch.no_grad():
        for p in list(double.parameters()) + list(single.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    return double, single


def block_inputs(batch: int, img_tokens: int = 16, txt_tokens: int = 4, seed: int = 0):
    """img, txt, vec and pe for a 4x4-token image; identical position ids for every item."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, img_tokens, D, generator=g)
    txt = torch.randn(batch, txt_tokens, D, generator=g)
    vec = torch.randn(batch, D, generator=g)
    side = int(img_tokens ** 0.5)
    ids = torch.cat((torch.zeros(batch, txt_tokens, 3), image_ids(batch, 2 * side, 2 * side)), dim=1)
    pe = EmbedND(D // HEADS, 10_000, tiny_config(D, HEADS).axes_dim)(ids)
    return img, txt, vec, pe

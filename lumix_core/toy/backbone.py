"""The toy backbone: :class:`lumix_core.model.flux.Flux` with a tiny config, and its sampler.

Why the real FLUX class: the adapter, QBA, the trainer's ``fit`` and the checkpoint formats
are exercised exactly as on FLUX.1; only the sizes shrink. Sizes (hidden 128, 2 heads of 64,
2 double + 2 single blocks, 1.8 M parameters) were chosen by timing on one CPU core: in the
shipped model's run (one thread, machine shared with other jobs) a stage-1 step of 16 color
images took ~0.26 s and a stage-2 step of 4 scenes x 5 maps ~0.26 s.
No distilled-guidance input (``guidance_embed=False``, like FLUX.1-schnell): the toy is
trained with caption dropout and sampled with true classifier-free guidance instead.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..latents import LATENT_CHANNELS, PATCH
from ..maps import MapSet
from ..model.flux import Flux, FluxConfig, tiny_config
from ..sampling.denoiser import FluxDenoiser, TextConditioning
from ..sampling.sampler import Pinned, sample_euler, schedule, shared_noise
from . import vae
from .rng import seeded
from .text import TEXT_DIM

#: Image side of the toy model in pixels (64 x 64 -> 16 x 16 latent cells -> 64 tokens).
IMAGE_SIZE = 64
#: Euler steps and true-CFG scale of the demo and the evaluations. Checked on 8 held-out scenes
#: with the shipped model: 50 steps scored the same as 24; CFG 2 gave more unit-length normals
#: than 1 or 3 (mean deviation 0.168 vs 0.177 / 0.194) at some cost in edge alignment.
SAMPLE_STEPS = 24
TRUE_CFG = 2.0


def toy_config(hidden_size: int = 128, num_heads: int = 2, depth: int = 2, depth_single_blocks: int = 2) -> FluxConfig:
    """FLUX config of the toy: pixel-unshuffle tokens in, toy text features in, no guidance input."""
    return tiny_config(hidden_size=hidden_size, num_heads=num_heads, depth=depth,
                       depth_single_blocks=depth_single_blocks, in_channels=LATENT_CHANNELS * PATCH * PATCH,
                       context_in_dim=TEXT_DIM, vec_in_dim=TEXT_DIM, guidance_embed=False)


def make_backbone(config: Optional[FluxConfig] = None, seed: int = 0) -> Flux:
    """A freshly initialised toy FLUX (deterministic for a seed), with adaLN-Zero init.

    Why adaLN-Zero (DiT, Peebles & Xie 2023): every modulation layer and the output layer
    start at zero, so each block starts as the identity and the model as "predict 0"; trained
    from scratch on few CPU steps this converges markedly faster than PyTorch's default init,
    whose random gates and shifts scramble the residual stream at step 0.
    """
    with seeded(seed):
        model = Flux(config or toy_config())
    zeroed = [model.final_layer.adaLN_modulation[-1], model.final_layer.linear]
    zeroed += [b.img_mod.lin for b in model.double_blocks] + [b.txt_mod.lin for b in model.double_blocks]
    zeroed += [b.modulation.lin for b in model.single_blocks]
    with torch.no_grad():
        for layer in zeroed:
            layer.weight.zero_()
            layer.bias.zero_()
    return model


def latent_shape(size: int = IMAGE_SIZE) -> tuple[int, int, int]:
    """``(C, h, w)`` of a ``size`` x ``size`` image in the toy VAE's model space."""
    vae.check_image_size(size, size)
    return (LATENT_CHANNELS, size // vae.FACTOR, size // vae.FACTOR)


def sample_schedule(steps: int = SAMPLE_STEPS) -> Tensor:
    """Linear t from 1 to 0: the toy's 64 tokens are far below FLUX's shift range, and training
    draws t logit-normally around 0.5, so no resolution shift applies."""
    return schedule(steps, shift=False)


@torch.no_grad()
def sample_maps(model: Flux, cond: TextConditioning, maps: MapSet, *, num_scenes: int, seed: int,
                uncond: Optional[TextConditioning] = None, true_cfg: float = TRUE_CFG,
                steps: int = SAMPLE_STEPS, size: int = IMAGE_SIZE, pinned_color: Optional[Tensor] = None,
                shared: bool = True) -> Tensor:
    """Sample ``num_scenes`` groups of ``maps`` (shared noise per scene); latents ``[N*M, C, h, w]``.

    ``cond``/``uncond`` hold one prompt per scene (or one for all). ``pinned_color``
    (``[N, C, h, w]`` clean latents) turns generation into decomposition: the color slot is fed
    clean at t = 0 and never updated, as in the release. ``model`` may have an adapter attached
    (then ``maps`` must be its map set) or not (plain text -> color, ``maps`` = color only).
    ``shared=False`` draws one noise per map instead of per scene: a control for how much of
    the maps' agreement comes from the shared noise alone (not how LumiX samples).
    """
    if shared:
        noise = shared_noise(num_scenes, maps, latent_shape(size), seed=seed)
    else:
        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn((num_scenes * maps.size, *latent_shape(size)), generator=g)
    pinned = None if pinned_color is None else Pinned.slot(maps, "color", pinned_color)
    return sample_euler(FluxDenoiser(model), noise, sample_schedule(steps), cond, uncond=uncond,
                        true_cfg=true_cfg if uncond is not None else 1.0, guidance=1.0, pinned=pinned,
                        group=maps.size)

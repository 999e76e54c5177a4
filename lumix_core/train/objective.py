"""The flow-matching objective on whole scenes, with per-sample randomness.

Flow matching as in FLUX: ``x_t = (1 - t) x0 + t eps`` and the model predicts the velocity
``v = eps - x0``. As in LumiX sampling, all maps of a scene share one noise draw and one
timestep. Optional decomposition training: the color map is fed clean with t = 0 (the
photo) and left out of the loss, exactly how the release decomposes a photo.

Why randomness is drawn per *sample position*: every draw for the ``p``-th scene the run
consumes (noise, t, caption dropout, photo conditioning) comes from a generator seeded by
``(seed, p)``. So the numbers do not depend on how scenes are split over processes or
micro-batches, nor on where a run was interrupted: one process with a batch of 2 and two
processes with 1 each see identical samples, and a resumed run continues bit-exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from .timesteps import sample_timestep

#: Seed streams of different purposes (never share one): per-sample draws, adapter init.
STREAM_SAMPLE = 1
STREAM_INIT = 2


def sample_generator(seed: int, position: int, stream: int = STREAM_SAMPLE) -> torch.Generator:
    """A CPU generator for sample ``position`` of a run (SeedSequence mixes the integers well)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(stream), int(position)]).generate_state(2, np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass(frozen=True)
class DrawSettings:
    timestep_sampler: str = "logit-normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift_schedule: str = "release"
    caption_dropout: float = 0.0
    photo_conditioning_prob: float = 0.0


@dataclass
class SceneDraw:
    """The random choices for one scene: shared noise ``[C, h, w]``, t, and two coin flips."""

    noise: Tensor
    t: float
    drop_caption: bool
    photo: bool


def draw_scene(seed: int, position: int, latent_shape: Sequence[int], settings: DrawSettings) -> SceneDraw:
    """All random numbers of one sample, in a fixed order from its own generator."""
    g = sample_generator(seed, position)
    C, h, w = latent_shape
    noise = torch.randn((C, h, w), generator=g, dtype=torch.float32)
    t = sample_timestep(settings.timestep_sampler, g, width=w * 8, height=h * 8, logit_mean=settings.logit_mean,
                        logit_std=settings.logit_std, shift_schedule=settings.shift_schedule)
    coins = torch.rand(2, generator=g, dtype=torch.float64)
    return SceneDraw(noise, t, bool(coins[0] < settings.caption_dropout),
                     bool(coins[1] < settings.photo_conditioning_prob))


@dataclass
class NoisyBatch:
    """Model inputs and targets for ``B`` scenes of ``M`` maps, flattened to ``B*M`` items."""

    x_t: Tensor  # [B*M, C, h, w]
    t: Tensor  # [B*M]
    target: Tensor  # [B*M, C, h, w]
    weight: Tensor  # [B, M]: 1 where the map counts in the loss


def make_noisy_batch(x0: Tensor, draws: Sequence[SceneDraw], query_index: int) -> NoisyBatch:
    """``x0 [B, M, C, h, w]`` clean latents -> noisy inputs, per-item t and velocity targets."""
    B, M = x0.shape[:2]
    x0 = x0.float()
    noise = torch.stack([d.noise for d in draws]).to(x0.device)[:, None].expand_as(x0)  # one draw per scene
    t = torch.tensor([d.t for d in draws], dtype=torch.float32, device=x0.device)[:, None].expand(B, M).clone()
    weight = torch.ones(B, M, device=x0.device)
    for b, d in enumerate(draws):
        if d.photo:  # the color map is the clean photo at t = 0, as in released decomposition
            t[b, query_index] = 0.0
            weight[b, query_index] = 0.0
    tt = t[:, :, None, None, None]
    x_t = (1.0 - tt) * x0 + tt * noise
    target = noise - x0
    return NoisyBatch(rearrange(x_t, "B M ... -> (B M) ..."), rearrange(t, "B M -> (B M)"),
                      rearrange(target, "B M ... -> (B M) ..."), weight)


def scene_losses(prediction: Tensor, batch: NoisyBatch) -> Tensor:
    """Mean squared velocity error per scene ``[B]`` over the maps that count."""
    B, M = batch.weight.shape
    per_item = rearrange((prediction.float() - batch.target).pow(2).flatten(1).mean(1), "(B M) -> B M", M=M)
    return (per_item * batch.weight).sum(1) / batch.weight.sum(1).clamp_min(1.0)

"""Stage 1 of the toy recipe: a text -> color FLUX trained from scratch with flow matching.

Why a stage 1 at all: LumiX adapts a *pretrained* text-to-image FLUX; the adapter learns
only how the other maps relate to the color image the backbone already knows how to draw.
The toy therefore first trains its own "FLUX.1" -- the backbone and the word-table text
encoder jointly, on rendered color images and their captions -- and freezes both.

The objective is the trainer's (:mod:`lumix_core.train.objective`): ``x_t = (1-t) x0 + t
eps``, velocity target ``eps - x0``, logit-normal t, every random draw from the sample's
position in the run, caption dropout to the empty caption (so classifier-free guidance
works at sampling time). Here each "scene group" is a single color map.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from ..model.flux import Flux
from ..sampling.denoiser import FluxDenoiser, TextConditioning
from ..train.fit import DataOrder
from ..train.lr_schedule import make_scheduler
from ..train.objective import DrawSettings, draw_scene, make_noisy_batch, scene_losses
from ..world.dataset import scene_seed
from ..world.render import render
from ..world.scene import sample_scene
from . import vae
from .seed_streams import STAGE1_DATA_SEED
from .text import ToyTextEncoder

log = logging.getLogger("lumix.toy")


@dataclass(frozen=True)
class Stage1Settings:
    """Stage-1 hyper-parameters (defaults: the shipped model)."""

    scenes: int = 4000
    #: 6000 steps: at 4000 the colour words did not yet control the colour on this world (most
    #: colour prompts drew green or purple); docs/toy_model.md, "The recipe".
    steps: int = 6000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    caption_dropout: float = 0.1
    max_grad_norm: float = 1.0
    data_seed: int = STAGE1_DATA_SEED
    seed: int = 0


@dataclass
class ColorSet:
    """Rendered color images in model space and their captions."""

    latents: Tensor  # [N, C, h, w]
    captions: list[str]


def render_color_set(count: int, data_seed: int, size: int) -> ColorSet:
    """Render ``count`` scenes of the dataset stream ``data_seed`` (the same scene seeds as
    :func:`lumix_core.world.dataset.write_world_dataset` with that seed) and keep color only."""
    latents, captions = [], []
    for i in range(count):
        result = render(sample_scene(scene_seed(data_seed, i)), size)
        color = torch.from_numpy(result.encode(["color"])["color"])
        latents.append(vae.encode(color[None])[0])
        captions.append(result.caption)
    return ColorSet(torch.stack(latents), captions)


@dataclass
class Stage1Result:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_stage1(model: Flux, text: ToyTextEncoder, data: ColorSet, settings: Stage1Settings,
                 on_step: Optional[Callable[[int, float], None]] = None) -> Stage1Result:
    """Train ``model`` and ``text`` jointly in place; returns the loss curve (per step)."""
    if model.lumix is not None:
        raise ValueError("stage 1 trains the plain backbone; detach the adapter first")
    s = settings
    model.train().requires_grad_(True)
    text.train().requires_grad_(True)
    params = list(model.parameters()) + list(text.parameters())
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    scheduler = make_scheduler(optimizer, s.warmup_steps, s.steps, "cosine")
    draw = DrawSettings(caption_dropout=s.caption_dropout)
    tokens = text.tokenize(data.captions)
    empty = text.tokenize([""])[0]
    denoise = FluxDenoiser(model)
    order = DataOrder(len(data.captions), s.seed)
    result = Stage1Result()
    start = time.perf_counter()
    for step in range(s.steps):
        positions = range(step * s.batch_size, (step + 1) * s.batch_size)
        idx = [order(p) for p in positions]
        x0 = data.latents[idx][:, None]  # [B, 1, C, h, w]: groups of one map
        draws = [draw_scene(s.seed, p, tuple(x0.shape[2:]), draw) for p in positions]
        batch = make_noisy_batch(x0, draws, query_index=0)
        tok = torch.stack([empty if d.drop_caption else tokens[i] for i, d in zip(idx, draws)])
        txt, y = text(tok)
        v = denoise(batch.x_t, batch.t, TextConditioning(txt, y), 1.0)
        loss = scene_losses(v, batch).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if s.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"stage 1 diverged at step {step + 1} (loss {value})")
        result.losses.append(value)
        if on_step is not None:
            on_step(step + 1, value)
    result.seconds = time.perf_counter() - start
    model.eval().requires_grad_(False)
    text.eval().requires_grad_(False)
    return result

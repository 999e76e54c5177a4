"""Host-independent sampling: FLUX flow-matching schedules, shared noise, Euler with CFG.

Flow matching as in FLUX: ``x_t = (1 - t) x0 + t eps``, the model predicts ``v = eps - x0``
and Euler steps ``x += (t_next - t) v`` from t = 1 to 0. Every map of a scene starts from
the same noise (one draw repeated M times) and gets the same prompt and position ids.
A *pinned* map (the photo's color in decomposition) is fed clean with t = 0 at every step
and is never updated, so it comes back bit-identical.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Protocol, Sequence

import torch
from torch import Tensor

from ..latents import PATCH, VAE_FACTOR
from ..maps import MapSet, check_group_batch

ScheduleKind = Literal["release", "flux", "linear"]
SCHEDULES: tuple[str, ...] = ("release", "flux", "linear")

# FLUX's resolution shift: mu linear in the token count through (256, 0.5) and (4096, 1.15).
BASE_SEQ_LEN, BASE_SHIFT = 256, 0.5
MAX_SEQ_LEN, MAX_SHIFT = 4096, 1.15


def shift_mu(image_seq_len: float) -> float:
    """FLUX's ``mu`` for a token count (``get_lin_function`` of the BFL code)."""
    m = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return m * image_seq_len + (BASE_SHIFT - m * BASE_SEQ_LEN)


def time_shift(mu: float, sigma: float, t: Tensor) -> Tensor:
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def seq_len_for(width: int, height: int, kind: ScheduleKind) -> float:
    """Token count that sets the shift. ``release`` reproduces the LumiX script's quirk, integer
    divisions included: ``(W//8)*(H//8)//256`` (16 at 512², where stock FLUX counts 1024 tokens)."""
    if kind == "release":
        return (width // VAE_FACTOR) * (height // VAE_FACTOR) // 256
    return (width // (VAE_FACTOR * PATCH)) * (height // (VAE_FACTOR * PATCH))


def schedule(num_steps: int, image_seq_len: Optional[float] = None, *, shift: bool = True) -> Tensor:
    """``num_steps + 1`` times from 1 to 0 (float64), shifted by ``mu(image_seq_len)``."""
    if num_steps < 1:
        raise ValueError(f"steps must be >= 1, got {num_steps}")
    ts = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    if shift:
        if image_seq_len is None:
            raise ValueError("a shifted schedule needs the image token count")
        ts = time_shift(shift_mu(image_seq_len), 1.0, ts)
    return ts


def schedule_for(width: int, height: int, num_steps: int, kind: ScheduleKind = "release") -> Tensor:
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule '{kind}'; choose one of {SCHEDULES}")
    if kind == "linear":
        return schedule(num_steps, shift=False)
    return schedule(num_steps, seq_len_for(width, height, kind))


def shared_noise(num_scenes: int, maps: MapSet, shape: Sequence[int], *, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device="cpu") -> Tensor:
    """``[num_scenes*M, *shape]``: one normal draw per scene, repeated for its M maps."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    per_scene = torch.randn((num_scenes, *shape), generator=g, dtype=torch.float32)
    return per_scene.repeat_interleave(maps.size, dim=0).to(device=device, dtype=dtype)


@dataclass
class Pinned:
    """Maps fed clean at t = 0 and never updated: ``mask[b]`` selects batch items."""

    mask: Tensor  # [B] bool
    clean: Tensor  # [B, ...] clean latents (only masked rows are used)

    @classmethod
    def slot(cls, maps: MapSet, name: str, clean_per_scene: Tensor) -> "Pinned":
        """Pin map ``name`` of every scene to ``clean_per_scene[n]`` (``[N, ...]``)."""
        N, M = clean_per_scene.shape[0], maps.size
        mask = torch.zeros(N * M, dtype=torch.bool)
        mask[maps.index(name)::M] = True
        clean = torch.zeros((N * M, *clean_per_scene.shape[1:]), dtype=clean_per_scene.dtype)
        clean[mask] = clean_per_scene
        return cls(mask, clean)

    def apply(self, x: Tensor) -> Tensor:
        mask = self.mask.to(x.device)
        x[mask] = self.clean.to(device=x.device, dtype=x.dtype)[mask]
        return x


class VelocityModel(Protocol):
    def __call__(self, x: Tensor, t: Tensor, cond: object, guidance: float) -> Tensor: ...


def sample_euler(
    model: VelocityModel,
    noise: Tensor,
    timesteps: Tensor,
    cond: object,
    *,
    uncond: object = None,
    true_cfg: float = 1.0,
    guidance: float = 3.5,
    pinned: Optional[Pinned] = None,
    group: int = 1,
    callback: Optional[Callable[[int, int, Tensor], None]] = None,
) -> Tensor:
    """Euler flow-matching sampler with distilled guidance and optional true CFG.

    ``model(x, t, cond, guidance)`` returns the velocity; ``t`` is per batch item so that
    pinned maps get t = 0. With ``uncond`` and ``true_cfg != 1`` the negative prompt runs as
    a separate pass and ``v = v_neg + true_cfg (v_pos - v_neg)``.
    """
    check_group_batch(noise.shape[0], group)
    x = noise.clone()
    if pinned is not None:
        pinned.apply(x)
    n = len(timesteps) - 1
    for i in range(n):
        t, t_next = float(timesteps[i]), float(timesteps[i + 1])
        tvec = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        if pinned is not None:
            tvec[pinned.mask.to(x.device)] = 0.0
        v = model(x, tvec, cond, guidance)
        if uncond is not None and true_cfg != 1.0:
            v_neg = model(x, tvec, uncond, guidance)
            v = v_neg + true_cfg * (v - v_neg)
        x = x + (t_next - t) * v
        if pinned is not None:
            pinned.apply(x)
        if callback is not None:
            callback(i, n, x)
    return x


#: The one-step decomposition's schedule: one Euler step from t = 1 to t = 0. In ComfyUI terms,
#: sigmas ``[1, 0]`` with the noise disabled (the fixed input is zero).
ONE_STEP_TIMESTEPS = (1.0, 0.0)


def decompose_one_step(model: VelocityModel, pinned_color: Tensor, maps: MapSet, cond: object, *,
                       guidance: float = 1.0) -> Tensor:
    """One deterministic call of a one-step adapter: latents ``[N*M, C, h, w]`` of N scenes.

    The photo's latent ``pinned_color [N, C, h, w]`` sits clean in the color slot at t = 0; every
    other map is fed the fixed input 0 at t = 1, and one Euler step to t = 0 turns the predicted
    velocity into the clean maps: ``x0 = 0 - 1 * v``. Written as :func:`sample_euler` on a zero
    "noise" so the one-step path is the same arithmetic a host's Euler sampler does with sigmas
    :data:`ONE_STEP_TIMESTEPS` and no noise (what ComfyUI's graph runs). Same shape as the
    multi-step decomposition; the color slot comes back bit-identical.
    """
    N, M = pinned_color.shape[0], maps.size
    fixed_input = torch.zeros((N * M, *pinned_color.shape[1:]), dtype=pinned_color.dtype, device=pinned_color.device)
    return sample_euler(model, fixed_input, torch.tensor(ONE_STEP_TIMESTEPS, dtype=torch.float64), cond,
                        guidance=guidance, pinned=Pinned.slot(maps, "color", pinned_color), group=M)

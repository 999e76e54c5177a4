"""Training timestep samplers for flow matching (t = 0 clean, t = 1 pure noise).

* ``logit-normal`` (default; SD3 / FLUX fine-tuning practice): ``t = sigmoid(m + s * n)``,
  ``n ~ N(0, 1)``. With ``m = 0, s = 1`` it puts most samples at mid noise, where the model
  decides layout and which map is which, and few at the extremes where the velocity target
  is nearly trivial.
* ``shifted``: ``u ~ U(0, 1)`` mapped through FLUX's resolution shift
  ``t = e^mu / (e^mu + (1/u - 1))`` with ``mu`` from the image's token count -- the same
  curve the sampler's schedule uses, so training visits timesteps in proportion to how
  sampling does. ``shift_schedule="release"`` uses the LumiX script's token count (a weaker
  shift), ``"flux"`` stock FLUX's.
"""
from __future__ import annotations

import math

import torch

from ..sampling.sampler import seq_len_for, shift_mu, time_shift


def sample_timestep(kind: str, generator: torch.Generator, *, width: int, height: int,
                    logit_mean: float = 0.0, logit_std: float = 1.0, shift_schedule: str = "release") -> float:
    """One timestep in (0, 1) for an image of ``width`` x ``height`` pixels."""
    if kind == "logit-normal":
        n = float(torch.randn((), generator=generator, dtype=torch.float64))
        return 1.0 / (1.0 + math.exp(-(logit_mean + logit_std * n)))
    if kind == "shifted":
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        u = min(max(u, 1e-6), 1.0 - 1e-6)
        mu = shift_mu(seq_len_for(width, height, shift_schedule))  # type: ignore[arg-type]
        return float(time_shift(mu, 1.0, torch.tensor(u, dtype=torch.float64)))
    raise ValueError(f"unknown timestep sampler '{kind}' (logit-normal or shifted)")

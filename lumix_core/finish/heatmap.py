"""Heat-map images for error maps: one fixed colour ramp, one fixed scale per error.

A fixed scale (``vmax``), not per-image min-max, keeps heat-maps of different scenes and
settings comparable: the same colour always means the same error.
"""
from __future__ import annotations

import torch
from torch import Tensor

#: Colour ramp, dark (no error) to bright (``vmax`` or more): black, indigo, red, orange, pale yellow.
RAMP: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 0.0),
    (0.25, 0.05, 0.45),
    (0.75, 0.15, 0.25),
    (0.98, 0.55, 0.05),
    (0.99, 0.99, 0.75),
)


def heatmap(values: Tensor, vmax: float, vmin: float = 0.0) -> Tensor:
    """``[N,H,W]`` values -> ``[N,H,W,3]`` IMAGE; ``vmin`` is black, ``vmax`` and above the brightest."""
    if values.dim() != 3:
        raise ValueError(f"heatmap: expected [N,H,W] values, got shape {tuple(values.shape)}")
    if not vmax > vmin:
        raise ValueError(f"heatmap: vmax must exceed vmin, got vmin={vmin}, vmax={vmax}")
    ramp = torch.tensor(RAMP, dtype=torch.float32)
    steps = ramp.shape[0] - 1
    t = ((values.float() - vmin) / (vmax - vmin)).nan_to_num(0.0).clamp(0.0, 1.0) * steps
    low = t.floor().clamp(max=steps - 1).long()
    frac = (t - low).unsqueeze(-1)
    return ramp[low] * (1.0 - frac) + ramp[low + 1] * frac

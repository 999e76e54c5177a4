"""Analytic test scenes (float64) in OpenGL camera space: sphere and tilted plane.

Camera at the origin looking down -Z, horizontal field of view ``fov``; pixel ``(i, j)``
looks along ``(x_j, y_i, -1)`` (see ``lumix_core.finish.consistency.camera_rays``), so the depth
``Z`` of a hit equals the ray parameter.
"""
from __future__ import annotations

import torch

from lumix_core.finish.consistency import camera_rays


def _rays(h: int, w: int, fov: float) -> torch.Tensor:
    x, y = camera_rays(h, w, fov, torch.float64)
    return torch.stack(torch.broadcast_tensors(x.view(1, w), y.view(h, 1), torch.tensor(-1.0, dtype=torch.float64)), -1)


def sphere(h: int, w: int, fov: float, center=(0.0, 0.0, -3.0), radius: float = 1.0):
    """(depth Z [H,W], unit normals [H,W,3], hit mask [H,W]); Z is 0 where the ray misses."""
    d = _rays(h, w, fov)
    c = torch.tensor(center, dtype=torch.float64)
    b = (d * c).sum(-1)
    a = (d * d).sum(-1)
    disc = b * b - a * ((c * c).sum() - radius**2)
    hit = disc > 0
    t = torch.where(hit, (b - disc.clamp(min=0).sqrt()) / a, torch.zeros_like(b))
    normals = (d * t.unsqueeze(-1) - c) / radius
    return t, normals, hit


def plane(h: int, w: int, fov: float, normal=(0.3, -0.4, 0.8), offset: float = 2.0):
    """(depth Z [H,W], unit normal [3]) of the plane ``n . P = -offset`` (facing the camera)."""
    n = torch.tensor(normal, dtype=torch.float64)
    n = n / n.norm()
    d = _rays(h, w, fov)
    z = -offset / (d * n).sum(-1)
    assert (z > 0).all(), "plane must lie in front of the camera everywhere"
    return z, n

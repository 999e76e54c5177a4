"""Relighting from LumiX maps: albedo x Lambertian shading from the normal map.

Frame: OpenGL camera space -- X right, Y up, Z towards the camera (normal maps in DirectX
convention are converted first). The light is directional; its direction ``L`` (unit,
pointing from the surface *towards* the light) is::

    L = (cos(elev) * cos(azim), cos(elev) * sin(azim), sin(elev))

azimuth 0 deg = light from the right of the image, 90 deg = from the top, 180 deg = from the
left, 270 deg = from the bottom (counter-clockwise as seen by the viewer); elevation 0 deg =
grazing, in the image plane; 90 deg = from the camera (flat, frontal light); negative
elevations light from behind.

Shading, in linear light (sRGB EOTF undone), per pixel with unit normal ``n``::

    lambert  = max(0, n . L)
    shading  = (ambient + intensity * light_color * lambert * falloff) * ratio ** keep
    relit    = srgb(clamp(linear(albedo) * shading, 0, 1))

``falloff`` (only with a depth map) dims surfaces farther from the light, as from a light
at finite distance: pixel ``(i, j)`` of an ``H x W`` image sits at
``p = (u, v, -(1 - d))`` with ``u = (j + 0.5 - W/2) / (H/2)``, ``v = -(i + 0.5 - H/2) / (H/2)``
and ``d`` the near-bright relative depth (so the depth range spans half the image height);
its distance to the light is measured along ``L`` from the plane that touches the scene's
box on the light's side, ``t = t0 - p . L`` with
``t0 = (W/H) |L_x| + |L_y| + max(0, -L_z)``, and ``falloff = 1 / (1 + strength * t)^2``.

``ambient`` is white light that reaches every pixel regardless of its normal.
``ratio`` (only with an irradiance map) keeps the original shading pattern (contact
shadows, occlusion) the normals cannot explain: the luminance of the linear irradiance
divided by its image mean; ``keep`` in [0, 1] sets how much of it is kept.

Memory: the output is allocated once and filled in chunks of rows, so temporaries stay at
a few ``chunk_rows x W`` planes even for 4K maps.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..conventions import (
    DEFAULT_NORMAL_CONVENTION,
    check_image,
    check_normal_convention,
    check_same_size,
    linear_to_srgb,
    luminance,
    normals_to_vectors,
    rgb,
    single_channel,
    srgb_to_linear,
)


@dataclass(frozen=True)
class Light:
    """A directional light (angles in degrees, see the module docstring for the frame)."""

    azimuth_deg: float = 45.0
    elevation_deg: float = 45.0
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    intensity: float = 1.0
    ambient: float = 0.0

    def __post_init__(self) -> None:
        if not -90.0 <= float(self.elevation_deg) <= 90.0:
            raise ValueError(f"light elevation must be within [-90, 90] degrees, got {self.elevation_deg}")
        if len(self.color) != 3 or any(float(c) < 0 for c in self.color):
            raise ValueError(f"light color must be three non-negative numbers, got {self.color}")
        if self.intensity < 0 or self.ambient < 0:
            raise ValueError(f"light intensity and ambient must be >= 0, got {self.intensity}, {self.ambient}")


def light_direction(azimuth_deg: float, elevation_deg: float) -> Tensor:
    """Unit vector towards the light in OpenGL camera space (float64, shape [3])."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], dtype=torch.float64)


def parse_color(text: str) -> tuple[float, float, float]:
    """``"#RRGGBB"`` / ``"RRGGBB"`` / ``"r,g,b"`` (floats) -> linear-light RGB multipliers.

    Hex colours are sRGB-encoded (as picked in a colour picker) and are linearised; comma
    separated floats are taken as linear values as they are.
    """
    s = str(text).strip()
    hex_match = re.fullmatch(r"#?([0-9a-fA-F]{6})", s)
    if hex_match:
        code = hex_match.group(1)
        srgb = torch.tensor([int(code[i : i + 2], 16) / 255.0 for i in (0, 2, 4)], dtype=torch.float64)
        return tuple(float(c) for c in srgb_to_linear(srgb))  # type: ignore[return-value]
    parts = [p for p in re.split(r"[,\s]+", s) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or any(v < 0 or not math.isfinite(v) for v in values):
        raise ValueError(f"light color {text!r}: use '#RRGGBB' or three non-negative numbers 'r,g,b'")
    return (values[0], values[1], values[2])


def _mean_luminance(irradiance: Tensor, chunk_rows: int) -> Tensor:
    """Per-image mean luminance of linear irradiance, accumulated in row chunks."""
    n, h = irradiance.shape[:2]
    total = torch.zeros(n, dtype=torch.float64)
    for top in range(0, h, chunk_rows):
        part = srgb_to_linear(rgb(irradiance[:, top : top + chunk_rows]).float())
        total += luminance(part).double().sum(dim=(1, 2))
    return total / (h * irradiance.shape[2])


def relight(
    albedo: Tensor,
    normal: Tensor,
    light: Light,
    *,
    depth: Optional[Tensor] = None,
    irradiance: Optional[Tensor] = None,
    normal_convention: str = DEFAULT_NORMAL_CONVENTION,
    falloff: float = 1.0,
    keep_shading: float = 0.0,
    chunk_rows: int = 128,
) -> Tensor:
    """Relit sRGB image ``[N,H,W,3]`` from albedo and normal maps (see module docstring).

    ``albedo``, ``normal``: ``[N,H,W,C]`` display maps. ``depth`` (``[N,H,W]`` or
    ``[N,H,W,C]``, near-bright) enables ``falloff``; ``irradiance`` enables ``keep_shading``.
    """
    albedo = check_image(albedo, "albedo", channels=(1, 3, 4))
    normal = check_image(normal, "normal", channels=(3, 4))
    convention = check_normal_convention(normal_convention)
    maps = {"albedo": albedo, "normal": normal}
    if depth is not None:
        if isinstance(depth, Tensor) and depth.dim() == 3:  # a MASK [N,H,W]
            depth = depth.unsqueeze(-1)
        depth = single_channel(check_image(depth, "depth", channels=(1, 3, 4)))
        maps["depth"] = depth.unsqueeze(-1)
    if irradiance is not None:
        irradiance = check_image(irradiance, "irradiance", channels=(1, 3, 4))
        maps["irradiance"] = irradiance
    n, h, w = check_same_size(maps)
    if falloff < 0:
        raise ValueError(f"falloff strength must be >= 0, got {falloff}")
    if not 0.0 <= keep_shading <= 1.0:
        raise ValueError(f"keep_shading must be within [0, 1], got {keep_shading}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")

    L64 = light_direction(light.azimuth_deg, light.elevation_deg)
    L = L64.float()
    color = torch.tensor(light.color, dtype=torch.float32) * float(light.intensity)
    use_falloff = depth is not None and falloff > 0
    use_ratio = irradiance is not None and keep_shading > 0
    if use_falloff:
        t0 = (w / h) * abs(float(L64[0])) + abs(float(L64[1])) + max(0.0, -float(L64[2]))
        u = (torch.arange(w, dtype=torch.float32) + 0.5 - w / 2) / (h / 2)
        u_term = u * L[0]  # [W]
    if use_ratio:
        mean_lum = _mean_luminance(irradiance, chunk_rows).float().clamp(min=1e-6)

    out = torch.empty((n, h, w, 3), dtype=torch.float32)
    for b in range(n):
        for top in range(0, h, chunk_rows):
            rows = slice(top, min(h, top + chunk_rows))
            vec = normals_to_vectors(normal[b, rows, :, :3].float(), convention)
            lambert = (vec @ L).clamp(min=0.0)  # [r, W]
            del vec
            if use_falloff:
                v = -(torch.arange(rows.start, rows.stop, dtype=torch.float32) + 0.5 - h / 2) / (h / 2)
                z = 1.0 - depth[b, rows].float().clamp(0.0, 1.0)
                t = t0 - (u_term.unsqueeze(0) + (v * L[1]).unsqueeze(1) - z * L[2])
                lambert = lambert / (1.0 + falloff * t.clamp(min=0.0)) ** 2
            shading = light.ambient + lambert.unsqueeze(-1) * color  # [r, W, 3]
            if use_ratio:
                ratio = luminance(srgb_to_linear(rgb(irradiance[b, rows]).float())) / mean_lum[b]
                shading = shading * ratio.clamp(min=0.0).pow(keep_shading).unsqueeze(-1)
            lit = srgb_to_linear(rgb(albedo[b, rows]).float()) * shading
            out[b, rows] = linear_to_srgb(lit.clamp(0.0, 1.0))
    return out


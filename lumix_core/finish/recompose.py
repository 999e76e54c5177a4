"""Recompose: albedo x irradiance -> a colour estimate, and its error against the colour map.

Intrinsic images factor a diffuse image as ``color = albedo * irradiance`` in *linear*
light. LumiX maps are sRGB-encoded with an unknown overall exposure, so the product is
taken in linear light and, optionally, scaled by the one factor ``s`` per image that best
fits the generated colour (least squares, ``s = <AI, C> / <AI, AI>``). What remains after
that fit is real disagreement between the maps, not an exposure difference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..conventions import check_image, check_same_size, linear_to_srgb, rgb, srgb_to_linear
from .heatmap import heatmap

#: Heat-map scale: a linear-light error of this size (10 % of full white) is the brightest colour.
RECOMPOSE_ERROR_VMAX = 0.1


@dataclass
class Recomposition:
    """``estimate``: sRGB ``[N,H,W,3]``; ``error``: linear abs error ``[N,H,W]`` (channel mean);
    ``scale``: fitted exposure ``[N]`` (1 without fitting); ``relative_rms``: ``[N]``,
    RMS error / RMS of the linear colour."""

    estimate: Tensor
    error: Tensor
    scale: Tensor
    relative_rms: Tensor

    def error_heatmap(self, vmax: float = RECOMPOSE_ERROR_VMAX) -> Tensor:
        """The error as an ``[N,H,W,3]`` IMAGE on a fixed scale (comparable across images)."""
        return heatmap(self.error, vmax)


def recompose(albedo: Tensor, irradiance: Tensor, color: Tensor, *, fit_scale: bool = True) -> Recomposition:
    """Colour estimate from albedo and irradiance (``[N,H,W,C]`` sRGB maps) and its error."""
    maps = {
        "albedo": check_image(albedo, "albedo", channels=(1, 3, 4)),
        "irradiance": check_image(irradiance, "irradiance", channels=(1, 3, 4)),
        "color": check_image(color, "color", channels=(1, 3, 4)),
    }
    n = check_same_size(maps)[0]
    product = srgb_to_linear(rgb(maps["albedo"]).float()) * srgb_to_linear(rgb(maps["irradiance"]).float())
    target = srgb_to_linear(rgb(maps["color"]).float())
    if fit_scale:
        num = (product.double() * target.double()).flatten(1).sum(1)
        den = product.double().pow(2).flatten(1).sum(1)
        scale = torch.where(den > 0, num / den.clamp(min=1e-30), torch.ones_like(den)).float()
    else:
        scale = torch.ones(n)
    estimate_lin = product * scale.view(-1, 1, 1, 1)
    diff = estimate_lin - target
    error = diff.abs().mean(dim=-1)
    rms = diff.double().pow(2).flatten(1).mean(1).sqrt()
    target_rms = target.double().pow(2).flatten(1).mean(1).sqrt().clamp(min=1e-12)
    return Recomposition(linear_to_srgb(estimate_lin.clamp(0.0, 1.0)), error, scale, (rms / target_rms).float())

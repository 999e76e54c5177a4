"""Consistency report: do the maps of one scene describe the same scene? No ground truth needed.

Four checks, each a number per scene plus (where spatial) a heat-map; :data:`HOW_TO_READ`
says how to read them and is embedded in every report:

* **normal deviation** -- how far the decoded normal vectors are from unit length.
* **recompose error** -- ``albedo x irradiance`` vs ``color`` in linear light, after fitting
  one exposure factor (see :mod:`lumix_core.finish.recompose`).
* **depth <-> normal agreement** -- normals derived from the depth map (at an assumed field of
  view) vs the predicted normals, angle in degrees. Depth is relative (near = bright, no
  metric scale), so it is mapped to distances ``Z`` with one unknown, the near/far distance
  ratio, under one of two readings of the relative map (linear in ``Z``, or linear in
  disparity ``1/Z``); unless given, the ratio and reading are fitted to the normals. One
  global number cannot hide local disagreement.
* **edge agreement** -- whether each map's edges sit where the colour map's edges are.

All maths runs at ``analysis_size`` (longer side) to keep the report fast on CPU; the field
of view is unchanged by resizing. The unit-length deviation is measured at full resolution
(resizing averages vectors, which would fake deviations at edges) and only its heat-map is
resized.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..conventions import (
    DEFAULT_NORMAL_CONVENTION,
    check_image,
    check_normal_convention,
    check_same_size,
    normals_to_vectors,
    single_channel,
)
from ..maps import canonical
from .heatmap import heatmap
from .recompose import RECOMPOSE_ERROR_VMAX, recompose

#: Heat-map scales (value shown brightest).
NORMAL_DEVIATION_VMAX = 0.25
ANGLE_VMAX_DEG = 45.0

#: Heat-maps every report returns (black where a check was skipped for lack of maps).
HEATMAP_NAMES: tuple[str, ...] = ("normal_deviation", "recompose_error", "depth_normal_error")

#: Readings of a relative depth map, see :func:`depth_from_relative`.
DEPTH_MODELS: tuple[str, ...] = ("linear", "disparity")

HOW_TO_READ: dict[str, str] = {
    "normal_deviation": (
        "mean and 95th percentile of | |n| - 1 | of the decoded normal vectors n = 2*pixel - 1. "
        "0 = the decoder produced unit vectors; 0.1 = vectors 10% too long or short. Connect the "
        "raw normal map: a renormalised map reads ~0 (8-bit quantisation leaves < 0.005). "
        f"Heat-map: black = 0, brightest = {NORMAL_DEVIATION_VMAX}."
    ),
    "recompose": (
        "scale = exposure factor s fitted so that s * albedo * irradiance matches color in linear "
        "light; relative_rms = RMS(s*A*I - C) / RMS(C): 0 = albedo x irradiance reproduces the "
        "colour exactly, 0.1 = 10% of the image signal unexplained (specular highlights and "
        "emitters, absent from the diffuse model, add to it legitimately). mean_abs_error is in "
        f"linear units. Heat-map: mean |error| over channels, brightest = {RECOMPOSE_ERROR_VMAX}."
    ),
    "depth_normal": (
        "mean and median angle in degrees between normals derived from the depth map (field of view "
        "fov_deg across the width, relative depth turned into distances with near_far_ratio under "
        "depth_model) and the predicted normals. 0 = both maps describe the same surfaces. "
        "Occlusion edges of the depth map always read large locally; the median ignores them. "
        f"Heat-map: angle, brightest = {ANGLE_VMAX_DEG:g} degrees."
    ),
    "edge_agreement": (
        "per map, correlation of edge strength (Sobel, 3x3 tolerance) with the color map, in [0,1]: "
        "1 = the same edges in the same places, 0 = unrelated edges. Levels differ by map type "
        "(albedo shares texture edges, irradiance shadow edges, depth/normal only object "
        "boundaries): compare a map across scenes or settings, not maps with each other."
    ),
}


# ----------------------------------------------------------------------------- geometry
def angular_error_deg(a: Tensor, b: Tensor) -> Tensor:
    """Angle in degrees between unit vectors ``[..., 3]`` (atan2 form: exact near 0)."""
    cross = torch.linalg.cross(a, b, dim=-1).norm(dim=-1)
    dot = (a * b).sum(dim=-1)
    return torch.rad2deg(torch.atan2(cross, dot))


def camera_rays(height: int, width: int, fov_deg: float, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Per-pixel ``(x, y)`` of the ray through each pixel centre at ``Z = 1`` (OpenGL frame).

    ``fov_deg`` is the horizontal field of view (across the width); pixels are square.
    Returns ``x [W]`` (right positive) and ``y [H]`` (up positive).
    """
    if not 0.0 < float(fov_deg) < 180.0:
        raise ValueError(f"field of view must be within (0, 180) degrees, got {fov_deg}")
    focal = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    x = (torch.arange(width, dtype=dtype) + 0.5 - width / 2.0) / focal
    y = -(torch.arange(height, dtype=dtype) + 0.5 - height / 2.0) / focal
    return x, y


def normals_from_depth(depth: Tensor, fov_deg: float) -> Tensor:
    """Unit normals ``[H,W,3]`` (OpenGL camera space, facing the camera) from depth ``[H,W]``.

    ``depth`` is the distance along the viewing axis (``Z``, far = larger, any scale), not
    the near-bright relative map (see :func:`depth_from_relative`). Each pixel is lifted to
    ``P = Z * (x, y, -1)``; the normal is the cross product of the central-difference
    tangents (one-sided at the border), so planes come out exact.
    """
    if not isinstance(depth, Tensor) or depth.dim() != 2 or min(depth.shape) < 2:
        shape = tuple(depth.shape) if isinstance(depth, Tensor) else type(depth).__name__
        raise ValueError(f"normals_from_depth: expected depth [H,W] with H, W >= 2, got {shape}")
    z = depth.float()
    if not torch.isfinite(z).all() or (z <= 0).any():
        raise ValueError(
            "normals_from_depth: depth must be finite positive distances (far = larger); turn a "
            "near-bright relative map into distances with depth_from_relative first"
        )
    h, w = z.shape
    x, y = camera_rays(h, w, fov_deg)
    points = torch.stack((x.view(1, w) * z, y.view(h, 1) * z, -z), dim=-1)  # [H,W,3]
    du = torch.gradient(points, dim=1)[0]
    dv = torch.gradient(points, dim=0)[0]
    n = torch.linalg.cross(dv, du, dim=-1)
    del du, dv
    facing = (n * points).sum(dim=-1, keepdim=True) > 0  # pointing away from the camera
    n = torch.where(facing, -n, n)
    length = n.norm(dim=-1, keepdim=True)
    fallback = torch.tensor([0.0, 0.0, 1.0]).expand_as(n)
    return torch.where(length > 1e-12, n / length.clamp(min=1e-30), fallback)


def depth_from_relative(relative: Tensor, near_far_ratio: float, model: str = "linear") -> Tensor:
    """Near-bright relative depth in [0, 1] -> distances ``Z`` (far plane at 1, near at the ratio).

    ``model="linear"``: the map is linear in ``Z``: ``Z = 1 - rel * (1 - r)``.
    ``model="disparity"``: the map is linear in ``1/Z``: ``Z = 1 / (1 + rel * (1/r - 1))``.
    Normals do not depend on the overall scale, only on ``r = Z_near / Z_far`` in (0, 1).
    """
    r = float(near_far_ratio)
    if not 0.0 < r < 1.0:
        raise ValueError(f"near_far_ratio must be within (0, 1), got {near_far_ratio}")
    rel = relative.float().clamp(0.0, 1.0)
    if model == "linear":
        return 1.0 - rel * (1.0 - r)
    if model == "disparity":
        return 1.0 / (1.0 + rel * (1.0 / r - 1.0))
    raise ValueError(f"depth model must be one of {list(DEPTH_MODELS)}, got {model!r}")


def depth_normal_mean_angle(relative: Tensor, normals: Tensor, fov_deg: float, ratio: float, model: str) -> float:
    """Mean angle (degrees, border pixels left out) between the normals of ``relative`` read with
    ``ratio`` / ``model`` (:func:`depth_from_relative`) and ``normals`` ``[H,W,3]``."""
    derived = normals_from_depth(depth_from_relative(relative, ratio, model), fov_deg)
    return float(angular_error_deg(derived, normals)[1:-1, 1:-1].mean())


def fit_depth_reading(
    relative: Tensor,
    normals: Tensor,
    fov_deg: float,
    models: tuple[str, ...] = DEPTH_MODELS,
    max_side: int = 192,
) -> tuple[float, str]:
    """Near/far ratio and depth model (among ``models``) whose depth normals best match ``normals``.

    Coarse log-spaced grid per model, then golden-section refinement around the best value,
    on a copy no larger than ``max_side`` (the angles hardly change with resolution).
    """
    h, w = relative.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(2, round(h * scale)), max(2, round(w * scale)))
        relative = F.interpolate(relative[None, None].float(), size=size, mode="area")[0, 0]
        normals = F.interpolate(normals.permute(2, 0, 1)[None].float(), size=size, mode="area")[0].permute(1, 2, 0)
        normals = normals / normals.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    grid = torch.logspace(math.log10(0.01), math.log10(0.98), 16).tolist()
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    best = (math.inf, 0.5, "linear")
    for model in models:
        if model not in DEPTH_MODELS:
            raise ValueError(f"depth model must be one of {list(DEPTH_MODELS)}, got {model!r}")

        def score(log_ratio: float) -> float:
            return depth_normal_mean_angle(relative, normals, fov_deg, math.exp(log_ratio), model)

        scores = [score(math.log(r)) for r in grid]
        i = min(range(len(grid)), key=scores.__getitem__)
        lo, hi = math.log(grid[max(0, i - 1)]), math.log(grid[min(len(grid) - 1, i + 1)])
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        fa, fb = score(a), score(b)
        for _ in range(12):
            if fa < fb:
                hi, b, fb = b, a, fa
                a = hi - golden * (hi - lo)
                fa = score(a)
            else:
                lo, a, fa = a, b, fb
                b = lo + golden * (hi - lo)
                fb = score(b)
        for value, log_ratio in ((fa, a), (fb, b), (scores[i], math.log(grid[i]))):
            if value < best[0]:
                best = (value, math.exp(log_ratio), model)
    return best[1], best[2]


# ----------------------------------------------------------------------------- edges
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def edge_strength(image: Tensor) -> Tensor:
    """Sobel gradient magnitude over all channels of ``[H,W,C]``, 3x3 box-smoothed, ``[H,W]``.

    The 3x3 box smoothing gives edges a one-pixel tolerance, so an edge that moved by one
    pixel still counts as coinciding.
    """
    if image.dim() != 3:
        raise ValueError(f"edge_strength: expected [H,W,C], got shape {tuple(image.shape)}")
    planes = image.permute(2, 0, 1).unsqueeze(1).float()  # [C,1,H,W]
    padded = F.pad(planes, (1, 1, 1, 1), mode="replicate")
    kernels = torch.stack((_SOBEL_X, _SOBEL_X.t())).unsqueeze(1)  # [2,1,3,3]
    grads = F.conv2d(padded, kernels)  # [C,2,H,W]
    magnitude = grads.pow(2).sum(dim=(0, 1)).sqrt()
    return F.avg_pool2d(magnitude[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]


def edge_agreement(a: Tensor, b: Tensor) -> float:
    """How well the edges of ``a`` and ``b`` (``[H,W,C]``, any channel counts) coincide, in [0, 1].

    Pearson correlation of the two edge-strength maps (:func:`edge_strength`), clipped at 0:
    1 = edges in the same places (whatever their contrast), 0 = unrelated or anti-related.
    Two maps without any edges agree (1); one flat map against one with edges scores 0.
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.dim() != 3 or b.dim() != 3:
        raise ValueError("edge_agreement: expected two [H,W,C] tensors")
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"edge_agreement: sizes differ, {tuple(a.shape[:2])} vs {tuple(b.shape[:2])}")
    ea, eb = edge_strength(a).double().flatten(), edge_strength(b).double().flatten()
    ea, eb = ea - ea.mean(), eb - eb.mean()
    na, nb = ea.norm(), eb.norm()
    tiny = 1e-9 * math.sqrt(ea.numel())
    if na <= tiny and nb <= tiny:
        return 1.0
    if na <= tiny or nb <= tiny:
        return 0.0
    return float(((ea @ eb) / (na * nb)).clamp(0.0, 1.0))


# ----------------------------------------------------------------------------- report
def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``[N,H,W,C]`` or ``[N,H,W]`` -> same at ``size`` (area averaging; identity if unchanged)."""
    if tuple(x.shape[1:3]) == size:
        return x.float()
    if x.dim() == 3:
        return F.interpolate(x[:, None].float(), size=size, mode="area")[:, 0]
    return F.interpolate(x.permute(0, 3, 1, 2).float(), size=size, mode="area").permute(0, 2, 3, 1)


def _percentile(x: Tensor, q: float, max_samples: int = 1 << 20) -> float:
    flat = x.flatten()
    if flat.numel() > max_samples:
        flat = flat[:: math.ceil(flat.numel() / max_samples)]
    return float(torch.quantile(flat.float(), q / 100.0))


def consistency_report(
    maps: Mapping[str, Tensor],
    *,
    fov_deg: float = 60.0,
    normal_convention: str = DEFAULT_NORMAL_CONVENTION,
    near_far_ratio: Optional[float] = None,
    depth_model: Optional[str] = None,
    analysis_size: int = 512,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Check the maps of ``N`` scenes (``{name: [N,H,W,C]}`` display maps) against each other.

    Returns ``(report, heatmaps)``: ``report`` is JSON-able (``settings``, ``how_to_read``,
    ``scenes``: one dict per scene; checks whose maps are missing are listed under
    ``skipped``); ``heatmaps`` maps each of :data:`HEATMAP_NAMES` to an ``[N,h,w,3]`` IMAGE
    at the analysis size (black where skipped). ``near_far_ratio`` / ``depth_model``: the
    depth reading (see :func:`depth_from_relative`); a None ratio is fitted per scene (over
    both models unless one is given); a given ratio without a model reads "linear".
    """
    if not maps:
        raise ValueError("consistency_report: no maps given")
    images = {canonical(k): check_image(v, k, channels=(1, 3, 4)) for k, v in maps.items()}
    n, h, w = check_same_size(images)
    convention = check_normal_convention(normal_convention)
    if analysis_size < 8:
        raise ValueError(f"analysis_size must be >= 8, got {analysis_size}")
    if depth_model is not None and depth_model not in DEPTH_MODELS:
        raise ValueError(f"depth model must be one of {list(DEPTH_MODELS)} or None (fit), got {depth_model!r}")
    if near_far_ratio is not None and not 0.0 < near_far_ratio < 1.0:
        raise ValueError(f"near_far_ratio must be within (0, 1) or None (fit), got {near_far_ratio}")
    scale = min(1.0, analysis_size / max(h, w))
    size = (max(2, round(h * scale)), max(2, round(w * scale)))
    small = {k: _resize(v, size) for k, v in images.items()}
    have = set(images)

    heat = {name: torch.zeros((n, size[0], size[1], 3)) for name in HEATMAP_NAMES}
    scenes: list[dict[str, Any]] = [{"scene": i, "skipped": []} for i in range(n)]

    if "normal" in have:
        for i in range(n):
            deviation = ((images["normal"][i, ..., :3].float() * 2.0 - 1.0).norm(dim=-1) - 1.0).abs()
            scenes[i]["normal_deviation"] = {"mean": float(deviation.mean()), "p95": _percentile(deviation, 95.0)}
            heat["normal_deviation"][i] = heatmap(_resize(deviation[None], size), NORMAL_DEVIATION_VMAX)[0]
    else:
        for s in scenes:
            s["skipped"].append("normal_deviation: no normal map")

    if {"albedo", "irradiance", "color"} <= have:
        rec = recompose(small["albedo"], small["irradiance"], small["color"], fit_scale=True)
        heat["recompose_error"] = rec.error_heatmap()
        for i in range(n):
            scenes[i]["recompose"] = {
                "scale": float(rec.scale[i]),
                "relative_rms": float(rec.relative_rms[i]),
                "mean_abs_error": float(rec.error[i].mean()),
            }
    else:
        for s in scenes:
            s["skipped"].append("recompose: needs albedo, irradiance and color")

    if {"depth", "normal"} <= have:
        for i in range(n):
            relative = single_channel(small["depth"][i : i + 1])[0]
            predicted = normals_to_vectors(small["normal"][i, ..., :3], convention)
            if near_far_ratio is None:
                models = DEPTH_MODELS if depth_model is None else (depth_model,)
                ratio, model = fit_depth_reading(relative, predicted, fov_deg, models)
            else:
                ratio, model = float(near_far_ratio), depth_model or "linear"
            derived = normals_from_depth(depth_from_relative(relative, ratio, model), fov_deg)
            angles = angular_error_deg(derived, predicted)
            inner = angles[1:-1, 1:-1] if min(size) > 2 else angles
            scenes[i]["depth_normal"] = {
                "mean_deg": float(inner.mean()),
                "median_deg": float(inner.median()),
                "near_far_ratio": ratio,
                "depth_model": model,
                "fitted": near_far_ratio is None,
            }
            heat["depth_normal_error"][i] = heatmap(angles[None], ANGLE_VMAX_DEG)[0]
    else:
        for s in scenes:
            s["skipped"].append("depth_normal: needs depth and normal")

    if "color" in have:
        others = [k for k in small if k != "color"]
        for i in range(n):
            scenes[i]["edge_agreement"] = {k: edge_agreement(small[k][i], small["color"][i]) for k in others}
    else:
        for s in scenes:
            s["skipped"].append("edge_agreement: no color map")

    report = {
        "settings": {
            "fov_deg": float(fov_deg),
            "normal_convention": convention,
            "near_far_ratio": near_far_ratio,
            "depth_model": depth_model,
            "analysis_size": [size[0], size[1]],
            "input_size": [h, w],
        },
        "how_to_read": dict(HOW_TO_READ),
        "scenes": scenes,
    }
    return report, heat


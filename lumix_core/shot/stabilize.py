"""Temporal stabilisation of a shot's finished maps: what keeps albedo, normals and depth still.

Why after decoding: the maps a scene's light does not change (albedo, and for a still camera
normals and depth) should not change from frame to frame, and that is a statement about the
finished maps, whichever model made them. Two cases:

* **locked-off** camera: albedo, normals and depth are the same in every frame, so each is
  fused over the whole shot (mean in linear light, mean unit vector, mean relative depth) --
  every frame gets the shot's estimate;
* **moving** camera: each frame's maps are blended with its neighbours' (``radius`` frames each
  side), warped onto its pixels by optical flow of the color frames (:mod:`.flow`), each
  neighbour trusted per pixel by how well its warped color matches and by its distance in time.
  Neighbours on both sides weigh alike, so a steady camera-space change (normals turning with
  the camera) is not lagged; each neighbour's relative depth is fitted (scale and shift) to the
  frame's own before it is blended.

Irradiance is never blended: it is what changes with the light. Where albedo was fused, the
irradiance is rebalanced, ``irradiance * albedo_before / albedo_after`` in linear light, so that
albedo x irradiance -- the color the model explained -- stays what it was in every frame. A moving
camera's irradiance is kept as decomposed: the warped albedo is slightly misaligned at edges, and
dividing by it put those edges into the irradiance (measured in experiments/shots/README.md).

Which camera is for the caller to say: a lamp sweep and a slow move are not told apart reliably
from the frames (flow follows the moving shadows). ``moving`` is safe for any shot; ``locked-off``
is for a camera that does not move and a scene in which nothing moves but the light.
Layout: ``{map: [T, H, W, C]}`` in [0, 1].
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from .. import conventions
from . import flow as _flow

__all__ = ["CAMERAS", "DEFAULT_CAMERA", "DEFAULT_RADIUS", "check_camera", "stabilize_shot", "fuse_locked_off",
           "blend_moving", "rebalance_irradiance"]

#: ``moving`` (flow-guided blending), ``locked-off`` (shot-level fusion), ``none`` (maps as decomposed).
CAMERAS = ("moving", "locked-off", "none")
#: Safe for any shot (a locked-off shot gets some of the fusion's gain, a moving one no frozen maps).
DEFAULT_CAMERA = "moving"
#: Neighbours blended each side of a frame of a moving camera.
DEFAULT_RADIUS = 3
_EPS = 1e-4


def _check(maps: Mapping[str, Tensor]) -> int:
    missing = [n for n in ("albedo", "color", "depth", "normal") if n not in maps]
    if missing:
        raise ValueError(f"LumiX: shot stabilisation needs the albedo, color, depth and normal maps; missing "
                         f"{', '.join(missing)} (decompose with the release's five maps)")
    frames = {int(m.shape[0]) for m in maps.values()}
    if len(frames) != 1:
        raise ValueError(f"LumiX: the maps of a shot must have one frame count, got {sorted(frames)}")
    return frames.pop()


def rebalance_irradiance(irradiance: Tensor, albedo_before: Tensor, albedo_after: Tensor) -> Tensor:
    """sRGB irradiance ``[T, H, W, C]`` scaled by ``albedo_before / albedo_after`` in linear light
    (clamped to [0, 1]), so that albedo x irradiance does not change."""
    a0, a1 = conventions.srgb_to_linear(albedo_before), conventions.srgb_to_linear(albedo_after)
    ratio = (a0 + _EPS) / (a1 + _EPS)
    return conventions.linear_to_srgb((conventions.srgb_to_linear(irradiance) * ratio).clamp(0.0, 1.0))


def _depth_image(depth: Tensor, channels: int) -> Tensor:
    """Relative depth ``[T, H, W]`` back to the convention: min-max per frame, ``channels`` wide."""
    return conventions.normalize_depth(depth)[..., None].expand(*depth.shape, channels)


def _with(maps: Mapping[str, Tensor], albedo: Tensor, depth: Tensor, normal: Tensor, *,
          rebalance: bool) -> dict[str, Tensor]:
    out = dict(maps)
    dtype = maps["albedo"].dtype
    if rebalance and "irradiance" in maps:
        out["irradiance"] = rebalance_irradiance(maps["irradiance"].float(), maps["albedo"].float(), albedo).to(dtype)
    out["albedo"] = albedo.to(dtype)
    out["depth"] = _depth_image(depth, maps["depth"].shape[-1]).to(dtype)
    out["normal"] = conventions.vectors_to_normals(normal).to(dtype)
    return out


def fuse_locked_off(maps: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every frame gets the shot's albedo (mean in linear light), normals (mean unit vector) and
    depth (mean relative depth); irradiance rebalanced (:func:`rebalance_irradiance`)."""
    frames = _check(maps)
    albedo = conventions.srgb_to_linear(maps["albedo"].float()).mean(dim=0, keepdim=True)
    normal = conventions.normals_to_vectors(maps["normal"].float()).mean(dim=0, keepdim=True)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=_EPS)
    depth = maps["depth"].float()[..., 0].mean(dim=0, keepdim=True)
    expand = (frames, -1, -1, -1)
    return _with(maps, conventions.linear_to_srgb(albedo).expand(*expand), depth.expand(frames, -1, -1),
                 normal.expand(*expand), rebalance=True)


def _fit_affine(x: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``a x + b`` with ``a, b`` the weighted least-squares fit of ``x`` to ``target`` (``x`` if degenerate)."""
    w = weight.reshape(-1).astype(np.float64)
    if w.sum() < 16:
        return x
    xs, ts = x.reshape(-1).astype(np.float64), target.reshape(-1).astype(np.float64)
    design = np.stack([xs, np.ones_like(xs)], axis=1) * np.sqrt(w)[:, None]
    (a, b), *_ = np.linalg.lstsq(design, ts * np.sqrt(w), rcond=None)
    return (a * x + b).astype(np.float32)


def blend_moving(maps: Mapping[str, Tensor], radius: int = DEFAULT_RADIUS) -> dict[str, Tensor]:
    """Each frame's albedo, normals and depth blended with ``radius`` neighbours each side, warped
    by the color frames' flow and weighted by photometric trust x ``exp(-(dt / radius)^2)``."""
    frames = _check(maps)
    if radius < 1 or frames < 2:
        return dict(maps)
    color = maps["color"].float().cpu().numpy()
    albedo = conventions.srgb_to_linear(maps["albedo"].float()).cpu().numpy()
    normal = conventions.normals_to_vectors(maps["normal"].float()).cpu().numpy()
    depth = maps["depth"].float()[..., :1].cpu().numpy()
    out_a, out_n, out_d = np.empty_like(albedo), np.empty_like(normal), np.empty_like(depth)
    for t in range(frames):
        acc_a, acc_n, acc_d = albedo[t].copy(), normal[t].copy(), depth[t].copy()
        total = np.ones(depth.shape[1:3] + (1,), dtype=np.float32)
        for s in range(max(0, t - radius), min(frames, t + radius + 1)):
            if s == t:
                continue
            f = _flow.flow(color[t], color[s])
            points = _flow.sample_points(f)
            weight = _flow.photometric_weight(color[t], _flow.warp(color[s], points), f)
            weight = (weight * np.exp(-((s - t) / radius) ** 2))[..., None]
            acc_a += weight * _flow.warp(albedo[s], points)
            acc_n += weight * _flow.warp(normal[s], points)
            acc_d += weight * _fit_affine(_flow.warp(depth[s], points), depth[t], weight)
            total += weight
        out_a[t], out_n[t], out_d[t] = acc_a / total, acc_n / total, acc_d / total
    normal_t = torch.from_numpy(out_n)
    normal_t = normal_t / normal_t.norm(dim=-1, keepdim=True).clamp(min=_EPS)
    return _with(maps, conventions.linear_to_srgb(torch.from_numpy(out_a).clamp(0.0, 1.0)),
                 torch.from_numpy(out_d[..., 0]), normal_t, rebalance=False)


def check_camera(camera: str) -> str:
    """``camera`` if :func:`stabilize_shot` can run it here (known, and opencv present for ``moving``):
    checked before a shot is decomposed, so a long decomposition never ends in this error."""
    if camera not in CAMERAS:
        raise ValueError(f"LumiX: unknown camera '{camera}'; use one of {', '.join(CAMERAS)}")
    if camera == "moving":
        _flow.require_opencv()
    return camera


def stabilize_shot(maps: Mapping[str, Tensor], camera: str = DEFAULT_CAMERA,
                   radius: int = DEFAULT_RADIUS) -> dict[str, Tensor]:
    """The shot's maps stabilised for ``camera`` (one of :data:`CAMERAS`)."""
    check_camera(camera)
    if camera == "none":
        return dict(maps)
    if camera == "locked-off":
        return fuse_locked_off(maps)
    return blend_moving(maps, radius)

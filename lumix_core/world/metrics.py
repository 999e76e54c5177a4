"""Ground-truth metrics for predicted intrinsic maps (synthetic world or any labelled set).

Why these: each measures one map up to exactly the ambiguity its convention leaves
open, so a model is not punished for what the map cannot know.

* normals are absolute (camera space): mean angular error in degrees, no fit;
* depth is relative (near = bright, min-max per image): an affine fit of the prediction
  to the ground truth first, then AbsRel in metric depth;
* albedo and irradiance are defined only up to a scale they share (``albedo * irradiance``
  stays the same): a per-channel (or global) scale fit in *linear* space, then MSE;
* maps of one scene must describe one physical scene (:func:`map_coherence`): albedo times
  irradiance must give the color, and the depth's slopes must give the normals -- the
  consistency report's checks, so the two can be compared.

Inputs are ``[H, W, C]`` (or ``[H, W]`` for depth) numpy arrays or torch tensors in the
display range [0, 1], encoded as :mod:`lumix_core.conventions` says. Masks are ``[H, W]``
booleans of pixels to score (default: all, or all with finite ground-truth depth).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from .. import conventions
from ..finish.consistency import depth_normal_mean_angle, fit_depth_reading
from ..finish.recompose import recompose
from ..maps import canonical
from .render import encode_depth, tone_map
from .scene import FOV_RANGE_DEG

__all__ = [
    "float64_tensor",
    "normal_angular_error",
    "depth_abs_rel",
    "linear_si_mse",
    "map_coherence",
    "COHERENCE_FOV_DEG",
    "evaluate_maps",
]


def _np(x: Any) -> np.ndarray:
    return float64_tensor(x).numpy()


def float64_tensor(x: Any) -> torch.Tensor:
    """A map (numpy or torch, any device) as a float64 CPU tensor, the precision the scores are computed in."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double()
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


def _mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape[:2], dtype=bool)
    m = np.asarray(mask.cpu().numpy() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    if m.shape != shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match the image size {shape[:2]}")
    if not m.any():
        raise ValueError("mask selects no pixels")
    return m


def _check_pair(pred: np.ndarray, gt: np.ndarray, what: str) -> None:
    if pred.shape[:2] != gt.shape[:2]:
        raise ValueError(f"{what}: prediction {pred.shape} and ground truth {gt.shape} differ in size")


def normal_angular_error(pred: Any, gt: Any, mask: Any = None) -> float:
    """Mean angle in degrees between predicted and ground-truth normals.

    Both are encoded ``(n + 1) / 2`` (OpenGL camera space); both are decoded and
    renormalised with :func:`conventions.normals_to_vectors`, so 8-bit rounding and
    non-unit network output do not count as error, only direction does.
    """
    p, g = float64_tensor(pred), float64_tensor(gt)
    _check_pair(p.numpy(), g.numpy(), "normal")
    m = _mask(mask, tuple(g.shape))
    cos = (conventions.normals_to_vectors(p) * conventions.normals_to_vectors(g)).sum(dim=-1)
    angles = np.degrees(np.arccos(np.clip(cos.numpy(), -1.0, 1.0)))
    return float(angles[m].mean())


def depth_abs_rel(pred: Any, gt_depth: Any, mask: Any = None) -> float:
    """AbsRel ``mean(|z_fit - z| / z)`` of a relative depth prediction vs metric depth.

    ``pred`` is a depth map in the project convention (near = bright; ``[H,W]`` or
    ``[H,W,C]``, channels averaged); ``gt_depth`` is camera-space depth ``z > 0``. The fit
    happens in *encoded* space: ``a * pred + b`` is least-squares fitted to the ground
    truth's own encoding (:func:`lumix_core.world.encode_depth`), then mapped back to z
    with the ground truth's ``z_min, z_max``. The encoding is affine in z, so this is the
    same as a least-squares scale/shift fit in z; the result is invariant to any affine
    change of ``pred`` (including a flipped polarity, which the fit absorbs).
    """
    p = _np(pred)
    if p.ndim == 3:
        p = p.mean(axis=-1)
    z = _np(gt_depth)
    _check_pair(p, z, "depth")
    valid = np.isfinite(z) & (z > 0)
    m = _mask(mask, z.shape) & valid
    if not m.any():
        raise ValueError("depth: no pixel with a finite, positive ground-truth depth")
    target = encode_depth(z, m)
    design = np.stack([p[m], np.ones(int(m.sum()))], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, target[m], rcond=None)
    z_min, z_max = float(z[m].min()), float(z[m].max())
    z_fit = z_max - (a * p[m] + b) * (z_max - z_min)
    return float(np.mean(np.abs(z_fit - z[m]) / z[m]))


def linear_si_mse(pred: Any, gt: Any, mask: Any = None, per_channel: bool = True) -> float:
    """Scale-invariant MSE of an sRGB-encoded map (albedo, irradiance), in linear space.

    Both maps are sRGB-encoded; both are linearised first, because the ambiguity that
    makes albedo and irradiance scale-free is multiplicative in linear light
    (``albedo * irradiance``: a brighter albedo with a dimmer light gives the same color).
    A least-squares scale ``s = sum(p g) / sum(p p)`` is fitted per channel (default: a
    coloured light tints albedo and irradiance in opposite ways, which only a per-channel
    scale forgives) or once for all channels, then ``mean((s p - g)^2)`` over the mask.
    """
    p = conventions.srgb_to_linear(float64_tensor(pred)[..., :3]).numpy()
    g = conventions.srgb_to_linear(float64_tensor(gt)[..., :3]).numpy()
    _check_pair(p, g, "albedo")
    m = _mask(mask, g.shape)
    pm, gm = p[m], g[m]  # [P, 3]
    axis = 0 if per_channel else None
    num, den = (pm * gm).sum(axis=axis), (pm * pm).sum(axis=axis)
    scale = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return float(np.mean((scale * pm - gm) ** 2))


#: Field of view the depth <-> normal check assumes: the middle of the world's camera range
#: (generated maps come with no camera; a wrong fov by +-8 deg costs the true maps ~1 deg).
COHERENCE_FOV_DEG = float(sum(FOV_RANGE_DEG) / 2)


def _nhwc(x: Any) -> torch.Tensor:
    t = float64_tensor(x).float()
    return (t[..., None] if t.dim() == 2 else t)[None]


def map_coherence(maps: Mapping[str, Any], fov_deg: float = COHERENCE_FOV_DEG) -> dict[str, float]:
    """Do one scene's maps describe one physical scene? Two errors, no ground truth needed.

    * ``recompose_error``: relative RMS of ``albedo x irradiance`` against ``color`` in linear
      light after one exposure fit (:func:`lumix_core.finish.recompose.recompose`); 0 for the world's
      own maps, where color is exactly that product.
    * ``depth_normal_error_deg``: mean angle between the normals derived from the depth map
      (near/far reading fitted, :func:`lumix_core.finish.consistency.fit_depth_reading`) and the
      normal map.

    Why physics and not edge agreement with color: edges reward copying -- a model that pastes
    its color image into every map scored above the ground truth. Physics does not: a copied
    color is neither an albedo/irradiance pair whose product is the color nor a depth whose
    slopes are the normals, and independent noise is neither. Both baselines are scored in the
    tests and must stay clearly worse than the true maps. The two numbers need only the maps
    they name; the others are skipped.
    """
    named = {canonical(k): v for k, v in maps.items()}
    out: dict[str, float] = {}
    if {"albedo", "irradiance", "color"} <= set(named):
        rec = recompose(_nhwc(named["albedo"]), _nhwc(named["irradiance"]), _nhwc(named["color"]), fit_scale=True)
        out["recompose_error"] = float(rec.relative_rms[0])
    if {"depth", "normal"} <= set(named):
        relative = conventions.single_channel(_nhwc(named["depth"]))[0]
        normals = conventions.normals_to_vectors(_nhwc(named["normal"])[0, ..., :3])
        ratio, model = fit_depth_reading(relative, normals, fov_deg)
        out["depth_normal_error_deg"] = depth_normal_mean_angle(relative, normals, fov_deg, ratio, model)
    return out


def evaluate_maps(pred: Mapping[str, Any], truth: Mapping[str, np.ndarray]) -> dict[str, float]:
    """All ground-truth metrics for one scene.

    ``pred``: encoded maps by name (any of albedo, irradiance, color, depth, normal).
    ``truth``: raw buffers as in a ``ground_truth/<id>.npz`` of
    :mod:`lumix_core.world.dataset` (``depth`` z, unit ``normal``, linear ``albedo``,
    optional linear ``irradiance`` and ``hit``). Only metrics whose maps are present are
    returned. (Coherence needs no truth and costs a fit: :func:`map_coherence`, separately.)
    """
    named = {canonical(k): v for k, v in pred.items()}
    mask = np.asarray(truth["hit"], dtype=bool) if "hit" in truth else None
    out: dict[str, float] = {}
    if "normal" in named:
        gt_n = conventions.vectors_to_normals(float64_tensor(truth["normal"]))
        out["normal_angular_error_deg"] = normal_angular_error(named["normal"], gt_n, mask)
    if "depth" in named:
        out["depth_abs_rel"] = depth_abs_rel(named["depth"], truth["depth"], mask)
    if "albedo" in named:
        gt_a = conventions.linear_to_srgb(float64_tensor(truth["albedo"]))
        out["albedo_si_mse"] = linear_si_mse(named["albedo"], gt_a, mask)
    if "irradiance" in named and "irradiance" in truth:
        out["irradiance_si_mse"] = linear_si_mse(named["irradiance"], tone_map(truth["irradiance"]), mask)
    return out

"""The one-step decomposition objective (``lumix-train fit --objective one-step``).

E2E-FT (Garcia et al. 2024, "Fine-tuning image-conditional diffusion models is easier than you
think") and Lotus / Marigold v2 showed that for dense prediction a *deterministic single step*,
fine-tuned end to end on task losses, matches or beats 50-step sampling. Here the step is the
one :func:`lumix_core.sampling.sampler.decompose_one_step` takes at inference: the color map is
the clean photo at t = 0, every other map is fed the fixed input 0 at t = 1, and the clean maps
are read off the predicted velocity, ``x0 = x_t - t v = -v``. Nothing is random in a sample
except the caption dropout, so scenes, processes and resumption need no noise bookkeeping.

Loss spaces (``--one-step-loss``):

* ``latent`` -- mean squared error of the predicted clean latents (every map alike). Works for
  any decoder, FLUX's included: nothing is decoded.
* ``pixel`` -- each map in the space that suits it, on the decoded images (``[-1, 1]``): normals
  by angular error (1 - cos, plus a little MSE so their length stays 1), depth by a
  scale/shift-invariant MSE (the maps are relative, min-max normalised per image), albedo,
  irradiance and anything else by MSE. Needs a decoder that is differentiable and cheap enough
  to run every step (the toy's linear VAE); FLUX's VAE decoder is not offered for that.
  ``--one-step-detail-weight W`` weighs each pixel's angular error by how far its true normal
  is from the mean normal around it (:func:`detail_weights`): curved surfaces and edges --
  small objects -- then count more than the large planes that fill most of a frame.
* ``both`` -- their sum.

Which wins on the toy is measured in docs/toy_model.md.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..maps import MapSet
from .objective import NoisyBatch

ONE_STEP_LOSSES = ("latent", "pixel", "both")
#: Weights of the pixel terms, set once on the toy so that each map's term starts at a similar size.
DEPTH_SSI_WEIGHT = 10.0
#: The small plain-MSE share added to the angular (normals) and invariant (depth) terms: they
#: leave the length (normals) or the scale/offset (depth) free, which then drifts.
ANCHOR_MSE_WEIGHT = 0.1

#: Side in pixels of the window whose mean normal :func:`detail_weights` compares a pixel's normal to
#: (about a small object's width on the toy's 64 x 64 frames).
DETAIL_WINDOW = 9

#: ``decode(latents [B, C, h, w]) -> images [B, H, W, 3]`` in [-1, 1], differentiable.
PixelDecoder = Callable[[Tensor], Tensor]


def make_one_step_batch(x0: Tensor, query_index: int) -> NoisyBatch:
    """``x0 [B, M, C, h, w]`` clean latents -> the one-step inputs, per-item t and clean targets.

    The color (``query_index``) is the clean photo at t = 0 and out of the loss; every other map
    is 0 at t = 1. ``target`` is the clean latent itself (not a velocity).
    """
    B, M = x0.shape[:2]
    x0 = x0.float()
    x_t = torch.zeros_like(x0)
    x_t[:, query_index] = x0[:, query_index]
    t = torch.ones(B, M, device=x0.device)
    t[:, query_index] = 0.0
    weight = torch.ones(B, M, device=x0.device)
    weight[:, query_index] = 0.0
    return NoisyBatch(rearrange(x_t, "B M ... -> (B M) ..."), rearrange(t, "B M -> (B M)"),
                      rearrange(x0, "B M ... -> (B M) ..."), weight)


def predicted_clean(v: Tensor, batch: NoisyBatch) -> Tensor:
    """``x0 = x_t - t v`` per item ``[B*M, C, h, w]`` (the color item: its own clean input)."""
    return batch.x_t - batch.t.to(v.dtype)[:, None, None, None] * v.float()


def _depth_ssi(pred: Tensor, true: Tensor) -> Tensor:
    """Scale/shift-invariant MSE per image of ``[B, H, W]`` depth (the fit is not differentiated)."""
    p, q = pred.flatten(1), true.flatten(1)
    design = torch.stack([p, torch.ones_like(p)], dim=-1)
    coef = torch.linalg.lstsq(design.detach(), q[..., None]).solution
    return ((design @ coef)[..., 0] - q).pow(2).mean(1)


def detail_weights(true_normals: Tensor, strength: float) -> Tensor:
    """Per-pixel weights ``[B, H, W]`` (mean 1 per image) from true normals ``[B, H, W, 3]``:
    ``1 + strength * |n - mean of n over the DETAIL_WINDOW^2 window around it|``.

    Why: a plane has the same normal as its neighbours and weighs 1; a sphere's normals turn
    everywhere and a box's edge is a jump, so they weigh more. Objects are a tenth of a frame
    but most of what tells one scene's normals from another's; a plain mean lets a model draw
    them faint and still score well on the floor and wall (docs/toy_model.md has the experiment).
    """
    x = true_normals.permute(0, 3, 1, 2)
    pad = DETAIL_WINDOW // 2
    local = F.avg_pool2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), DETAIL_WINDOW, stride=1)
    weights = 1.0 + strength * (x - local).norm(dim=1)
    return weights / weights.mean((1, 2), keepdim=True)


def pixel_terms(pred: Tensor, true: Tensor, name: str, detail_weight: float = 0.0) -> Tensor:
    """Per-scene loss ``[B]`` of one map kind from decoded images ``[B, H, W, 3]`` in [-1, 1];
    ``detail_weight``: the strength of :func:`detail_weights` on the normals' angular error."""
    mse = (pred - true).pow(2).flatten(1).mean(1)
    if name == "normal":  # decoded normal maps are the unit vectors themselves: (n + 1) / 2 in [0, 1] -> n
        angular = 1.0 - F.cosine_similarity(pred, true, dim=-1, eps=1e-6)
        if detail_weight:
            angular = angular * detail_weights(true.detach(), detail_weight)
        return angular.flatten(1).mean(1) + ANCHOR_MSE_WEIGHT * mse
    if name == "depth":
        return DEPTH_SSI_WEIGHT * _depth_ssi(pred.mean(-1), true.mean(-1)) + ANCHOR_MSE_WEIGHT * mse
    return mse


def one_step_losses(v: Tensor, batch: NoisyBatch, maps: MapSet, space: str,
                    decode: Optional[PixelDecoder] = None, detail_weight: float = 0.0) -> Tensor:
    """Per-scene loss ``[B]`` over the maps that count (mean over them); ``detail_weight``: see
    :func:`pixel_terms` (pixel spaces only)."""
    if space not in ONE_STEP_LOSSES:
        raise ValueError(f"one-step loss must be one of {', '.join(ONE_STEP_LOSSES)}, got '{space}'")
    B, M = batch.weight.shape
    pred = predicted_clean(v, batch)
    per_map = torch.zeros(B, M, device=v.device)
    if space in ("latent", "both"):
        per_map = per_map + rearrange((pred - batch.target).pow(2).flatten(1).mean(1), "(B M) -> B M", M=M)
    if space in ("pixel", "both"):
        if decode is None:
            raise ValueError("pixel losses need a differentiable decoder")
        images = rearrange(decode(pred), "(B M) H W C -> B M H W C", M=M)
        truth = rearrange(decode(batch.target), "(B M) H W C -> B M H W C", M=M)
        terms = [pixel_terms(images[:, i], truth[:, i], name, detail_weight) for i, name in enumerate(maps.names)]
        per_map = per_map + torch.stack(terms, dim=1)
    return (per_map * batch.weight).sum(1) / batch.weight.sum(1).clamp_min(1.0)

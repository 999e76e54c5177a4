"""Temporal metrics of a shot's predicted maps: flicker and temporal error against exact truth.

Why two: where the truth is constant (a locked-off camera, :data:`.shots.LOCKED_OFF_MOVES`),
any frame-to-frame change of albedo, normals or depth is flicker; where the camera moves, the
maps must change, and by the true amount -- so a moving shot is scored by how far the predicted
frame-to-frame change is from the true one, at the same pixel. Neither can be read alone: a
constant output has no flicker at all, which is why per-frame accuracy
(:func:`lumix_core.world.metrics.evaluate_maps`) is always reported beside them.

Units: albedo in linear RGB (mean absolute change per channel and pixel), normals in degrees,
depth in the encoded convention (near = bright, min-max per frame, [0, 1]).
Inputs are ``{map: [T, H, W, 3]}`` display maps (numpy or torch), as
:meth:`.shots.Shot.encoded` gives the truth.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .. import conventions
from .metrics import float64_tensor

__all__ = ["TEMPORAL_MAPS", "frame_changes", "flicker", "temporal_error"]

#: The maps whose stability is scored: the ones a scene's light does not change.
TEMPORAL_MAPS = ("albedo", "normal", "depth")


def frame_changes(name: str, frames: Any) -> torch.Tensor:
    """Per-pixel change from each frame to the next, ``[T-1, H, W, C]``, in the map's unit space:
    linear RGB for albedo, unit vectors for normals (their difference; its length is the angle in
    radians for small angles), the encoded value for depth (first channel)."""
    x = float64_tensor(frames)
    if name == "albedo":
        x = conventions.srgb_to_linear(x[..., :3])
    elif name == "normal":
        x = conventions.normals_to_vectors(x[..., :3])
    elif name == "depth":
        x = x[..., :1]
    else:
        raise ValueError(f"no temporal metric for '{name}'; scored maps: {list(TEMPORAL_MAPS)}")
    return x[1:] - x[:-1]


def _score(name: str, change: torch.Tensor) -> float:
    """Mean size of per-pixel changes: degrees for normals (chord to angle), mean |.| otherwise."""
    if name == "normal":
        chord = change.norm(dim=-1).clamp(max=2.0)
        return float(torch.rad2deg(2.0 * torch.asin(chord / 2.0)).mean())
    return float(change.abs().mean())


def flicker(pred: Mapping[str, Any]) -> dict[str, float]:
    """Mean frame-to-frame change of each map of :data:`TEMPORAL_MAPS` present in ``pred``
    (``flicker_<map>``): on a locked-off shot all of it is error."""
    return {f"flicker_{n}": _score(n, frame_changes(n, pred[n])) for n in TEMPORAL_MAPS if n in pred}


def temporal_error(pred: Mapping[str, Any], truth: Mapping[str, Any]) -> dict[str, float]:
    """Mean distance between the predicted and the true frame-to-frame change, per pixel
    (``temporal_<map>``); for normals the angle the change vectors differ by, in degrees."""
    return {f"temporal_{n}": _score(n, frame_changes(n, pred[n]) - frame_changes(n, truth[n]))
            for n in TEMPORAL_MAPS if n in pred}

"""Shots of the synthetic world: a scene seen over frames, with exact truth in every frame.

Why: temporal stability can only be measured where the true change between frames is known.
Three moves, each a function of the frame's time ``t`` in [0, 1]:

* ``lamp`` -- a locked-off camera while the scene's lamp (its main light) sweeps round the
  target: albedo, normals and depth are truly constant, only the light changes;
* ``orbit`` -- the camera circles the target about the vertical axis, lights fixed;
* ``pan`` -- the camera and its target slide sideways together, lights fixed.

The moves change only the light or the camera, never the objects, so a frame renders with
:func:`lumix_core.world.render.render` like any scene.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from .render import RenderResult, render, yaw_matrix
from .scene import SceneSpec

__all__ = ["MOVES", "LOCKED_OFF_MOVES", "Shot", "lamp_sweep", "orbit", "pan", "render_shot"]

#: Lamp sweep: azimuth swept about the target, degrees, over the shot.
LAMP_SWEEP_DEG = 120.0
#: Orbit: camera azimuth swept about the target, degrees, over the shot.
ORBIT_DEG = 20.0
#: Pan: sideways travel of camera and target, world units, over the shot.
PAN_DISTANCE = 0.8


def _vec(v: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(x) for x in v)  # type: ignore[return-value]


def lamp_sweep(spec: SceneSpec, t: float) -> SceneSpec:
    """The scene with its main light (``lights[0]``) turned about the target's vertical axis by
    ``(t - 1/2) * LAMP_SWEEP_DEG``; for a directional light its direction turns the same way."""
    light, target = spec.lights[0], np.asarray(spec.camera.target)
    angle = math.radians((t - 0.5) * LAMP_SWEEP_DEG)
    if light.kind == "point":
        moved = _vec(target + yaw_matrix(angle) @ (np.asarray(light.vector) - target))
    else:
        moved = _vec(yaw_matrix(angle) @ np.asarray(light.vector))
    return replace(spec, lights=(replace(light, vector=moved),) + tuple(spec.lights[1:]))


def orbit(spec: SceneSpec, t: float) -> SceneSpec:
    """The camera turned about the target's vertical axis by ``(t - 1/2) * ORBIT_DEG``."""
    cam, target = spec.camera, np.asarray(spec.camera.target)
    moved = target + yaw_matrix(math.radians((t - 0.5) * ORBIT_DEG)) @ (np.asarray(cam.position) - target)
    return replace(spec, camera=replace(cam, position=_vec(moved)))


def pan(spec: SceneSpec, t: float) -> SceneSpec:
    """Camera and target slid along the camera's horizontal right axis by ``(t - 1/2) * PAN_DISTANCE``."""
    cam = spec.camera
    forward = np.asarray(cam.target) - np.asarray(cam.position)
    right = np.array([-forward[2], 0.0, forward[0]])
    shift = right / np.linalg.norm(right) * (t - 0.5) * PAN_DISTANCE
    return replace(spec, camera=replace(cam, position=_vec(np.asarray(cam.position) + shift),
                                        target=_vec(np.asarray(cam.target) + shift)))


MOVES: dict[str, Callable[[SceneSpec, float], SceneSpec]] = {"lamp": lamp_sweep, "orbit": orbit, "pan": pan}
#: Moves whose albedo, normals and depth are truly constant over the shot.
LOCKED_OFF_MOVES = ("lamp",)


@dataclass
class Shot:
    """One rendered shot: the move's name and one :class:`RenderResult` per frame."""

    move: str
    frames: Sequence[RenderResult]

    @property
    def locked_off(self) -> bool:
        return self.move in LOCKED_OFF_MOVES

    def encoded(self) -> dict[str, np.ndarray]:
        """The true display maps ``{map: [T, H, W, 3]}`` (:meth:`RenderResult.encode` per frame)."""
        enc = [f.encode() for f in self.frames]
        return {k: np.stack([e[k] for e in enc]) for k in enc[0]}


def render_shot(spec: SceneSpec, move: str, frames: int = 24, size: int = 64) -> Shot:
    """``frames`` renders of ``spec`` under ``move`` (a key of :data:`MOVES`), ``t`` evenly from 0 to 1."""
    if move not in MOVES:
        raise ValueError(f"unknown move {move!r}; use one of {list(MOVES)}")
    if frames < 2:
        raise ValueError(f"a shot needs at least 2 frames, got {frames}")
    return Shot(move, [render(MOVES[move](spec, i / (frames - 1)), size) for i in range(frames)])

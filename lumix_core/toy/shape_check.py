"""Is a generated object a recognisable sphere or box? A check read off the intrinsic maps.

The toy should draw "recognisable spheres and boxes in the contact sheet". Looking is not a
measurement, so this turns it into one, with the maps LumiX generates anyway:

1. the object is the largest 4-connected region of albedo pixels whose nearest palette colour
   is the prompt's colour (:func:`object_mask`; the prompts of
   :func:`lumix_core.toy.scoring.object_checks.color_prompts` name one object and its colour);
2. its normals are compared with two shape models (:func:`shape_residuals`), each the mean
   angle between the predicted normals and the model's:

   * **sphere**: the normals of a sphere seen head-on whose outline is the region's
     equal-area circle around its centroid, ``(dx / r, -dy / r, sqrt(1 - (dx² + dy²) / r²))``
     (orthographic: perspective and the camera's pitch are ignored; they cost the true
     spheres of the world 5-14 degrees);
   * **box**: at most three flat faces -- a box shows no more from any viewpoint -- fitted by
     a deterministic spherical k-means with k = 3 (:func:`_three_faces`);

3. the object reads as whichever model fits better (:func:`recognised_shape`).

Why normals and not the silhouette: at 64 x 64 a box seen from above the floor has a
hexagonal outline, and a disk fits hexagons nearly as well as it fits circles (tried: a
disk-against-rectangle fit of the outline named 82 % of 60 one-object held-out scenes through
the toy VAE; the normals name all of them, the wrong model's residual at least 10 degrees
above the right one's, at least 20 on the rendered maps). Why two models and no
threshold: a model that draws the same blob for every prompt is named one shape every time,
so over prompts with as many spheres as boxes it scores exactly one half -- chance -- whatever
the blob looks like; camera-facing normals, noise and the color image copied into the normal
slot do the same. The world's own truth scores 1.0 (``tests/test_toy_shape_check.py``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..world.scene import PALETTE

#: Fewer object pixels than this is "no object drawn" (the world's smallest one-object scenes
#: have about 40 pixels at 64 x 64).
MIN_OBJECT_PIXELS = 8
#: Faces of the box model: the most a box shows from any viewpoint.
BOX_FACES = 3
SHAPES = ("sphere", "box")


def nearest_palette(image: "np.ndarray | torch.Tensor", colors: Sequence[str] = tuple(PALETTE)) -> np.ndarray:
    """``[H, W]`` int: for each pixel of an sRGB ``[H, W, 3]`` image in [0, 1], the index in
    ``colors`` of its nearest palette colour."""
    palette = torch.tensor([PALETTE[c] for c in colors], dtype=torch.float32)
    pixels = torch.as_tensor(image).reshape(-1, 3).float()
    return torch.cdist(pixels, palette).argmin(dim=1).reshape(image.shape[:2]).numpy()


def object_mask(albedo: "np.ndarray | torch.Tensor", color: str) -> Optional[np.ndarray]:
    """``[H, W]`` bool: the largest 4-connected region of ``albedo`` pixels nearest to
    ``color``; None if it has fewer than :data:`MIN_OBJECT_PIXELS` pixels."""
    try:  # the train extra; imported here so the toy's import (and lumix demo) needs no opencv
        import cv2
    except ImportError:
        raise ImportError("the toy's shape check needs opencv-python: pip install 'lumix-intrinsics[train]'") from None

    names = list(PALETTE)
    if color not in names:
        raise ValueError(f"unknown colour {color!r}; the palette is {names}")
    region = (nearest_palette(albedo, names) == names.index(color)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=4)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if int(stats[largest, cv2.CC_STAT_AREA]) < MIN_OBJECT_PIXELS:
        return None
    return labels == largest


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(axis=1), -1.0, 1.0)))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)


def _three_faces(normals: np.ndarray, iterations: int = 20) -> np.ndarray:
    """``[P, 3]`` unit normals -> ``[P, 3]`` the face normal each is assigned to: spherical
    k-means, k = :data:`BOX_FACES`, seeded by farthest points (deterministic, no RNG)."""
    centres = [normals[int(np.argmax(_angles_deg(normals, _unit(normals.mean(0, keepdims=True)))))]]
    while len(centres) < BOX_FACES:
        nearest = np.min(np.stack([_angles_deg(normals, c[None]) for c in centres]), axis=0)
        centres.append(normals[int(np.argmax(nearest))])
    c = np.stack(centres)
    for _ in range(iterations):
        label = np.argmax(normals @ c.T, axis=1)
        c = _unit(np.stack([normals[label == k].sum(0) if np.any(label == k) else c[k] for k in range(BOX_FACES)]))
    return c[np.argmax(normals @ c.T, axis=1)]


def shape_residuals(mask: np.ndarray, normal: "np.ndarray | torch.Tensor") -> dict[str, float]:
    """Mean angle (degrees) between the normals inside ``mask`` and each shape model's.

    ``normal``: ``[H, W, 3]`` in [0, 1], OpenGL (x right, y up, z towards the viewer), as
    :func:`lumix_core.conventions.finish_maps` and the world's ``encode`` write them.
    """
    n = _unit(np.asarray(normal, dtype=np.float64)[mask] * 2.0 - 1.0)
    ys, xs = np.nonzero(mask)
    radius = np.sqrt(mask.sum() / np.pi) + 0.5  # + half a pixel: pixel centres lie inside the outline
    dx, dy = (xs - xs.mean()) / radius, -(ys - ys.mean()) / radius
    sphere = _unit(np.stack([dx, dy, np.sqrt(np.clip(1.0 - dx ** 2 - dy ** 2, 0.0, 1.0))], axis=1))
    return {"sphere": float(_angles_deg(n, sphere).mean()), "box": float(_angles_deg(n, _three_faces(n)).mean())}


def recognised_shape(albedo: "np.ndarray | torch.Tensor", normal: "np.ndarray | torch.Tensor",
                     color: str) -> Optional[str]:
    """"sphere" or "box": which shape model the ``color`` object's normals fit better; None if
    no such object is drawn."""
    mask = object_mask(albedo, color)
    return None if mask is None else better_fit(shape_residuals(mask, normal))


def better_fit(residuals: dict[str, float]) -> str:
    """The shape whose model fits better, from :func:`shape_residuals` (for callers that keep the residuals)."""
    return min(SHAPES, key=residuals.__getitem__)


__all__ = ["MIN_OBJECT_PIXELS", "BOX_FACES", "SHAPES", "nearest_palette", "object_mask", "shape_residuals",
           "recognised_shape", "better_fit"]

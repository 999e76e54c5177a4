"""Does a generated object have the colour and the shape its prompt names?

One object of each saturated colour (:data:`SATURATED_COLORS`), sphere and box, on a gray floor
(:func:`color_prompts`): the albedo's dominant colour must be the named one
(:func:`dominant_color`), and the object of that colour must read as the named shape
(:func:`lumix_core.toy.shape_check.recognised_shape`). :func:`one_object_scenes` finds the
held-out scenes that show what such a prompt describes, for the same checks on the world's truth.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ...world.render import RenderResult
from ...world.scene import FLOOR_COLORS, PALETTE
from ..model import ToyLumiX
from ..shape_check import SHAPES, nearest_palette, recognised_shape
from .held_out import EvalSettings, held_out_scenes

#: Object colours of the colour-following test: the palette minus the neutral floor colours.
SATURATED_COLORS = tuple(c for c in PALETTE if c not in FLOOR_COLORS)


def is_one_object(result: RenderResult) -> bool:
    """A scene with a single flat object of a saturated colour: one whose object the shape check
    can find by its colour alone."""
    objects = result.spec.objects
    material = objects[0].material
    return len(objects) == 1 and material.kind == "flat" and material.colors[0] in SATURATED_COLORS


def one_object_scenes(scan: int) -> list[RenderResult]:
    """The scenes among the first ``scan`` held-out ones that pass :func:`is_one_object`."""
    return [r for r in held_out_scenes(scan) if is_one_object(r)]


def dominant_color(albedo: torch.Tensor, colors: Sequence[str] = tuple(PALETTE)) -> Optional[str]:
    """The most frequent non-floor colour of an sRGB albedo ``[H, W, 3]``: every pixel is
    assigned its nearest palette colour, and the floor colours (neutral) are not counted.
    None if no pixel is nearest to a saturated colour."""
    names = list(colors)
    counts = np.bincount(nearest_palette(albedo, names).reshape(-1), minlength=len(names))
    for i, name in enumerate(names):
        if name in FLOOR_COLORS:
            counts[i] = 0
    return names[int(counts.argmax())] if int(counts.max()) > 0 else None


def color_prompts(shapes: Sequence[str] = SHAPES) -> list[tuple[str, str]]:
    """``(colour, prompt)`` for one object of each saturated colour and shape on a gray floor."""
    return [(c, f"a {c} {s} on a gray floor, light from above") for c in SATURATED_COLORS for s in shapes]


def prompt_shape(prompt: str) -> str:
    """The shape a prompt of :func:`color_prompts` names."""
    return next(s for s in SHAPES if f" {s} " in f" {prompt} ")


def object_checks(model: ToyLumiX, settings: EvalSettings, index: int) -> list[dict[str, float]]:
    """For each prompt of :func:`color_prompts`, generated with the colour check's seed ``index``:
    ``color`` 1.0 if the albedo's dominant colour (:func:`dominant_color`) is the named one, and
    ``shape`` 1.0 if the named colour's object reads as the named shape
    (:func:`lumix_core.toy.shape_check.recognised_shape`), else 0.0."""
    checks = []
    prompts = color_prompts()
    for start in range(0, len(prompts), settings.batch):
        chunk = prompts[start: start + settings.batch]
        maps = model.generate([p for _, p in chunk], seed=settings.seed + 1000 * index + start,
                              steps=settings.steps, true_cfg=settings.true_cfg)
        for n, (color, prompt) in enumerate(chunk):
            albedo, normal = maps["albedo"].image[n], maps["normal"].image[n]
            checks.append({"color": float(dominant_color(albedo) == color),
                           "shape": float(recognised_shape(albedo, normal, color) == prompt_shape(prompt))})
    return checks


__all__ = ["SATURATED_COLORS", "is_one_object", "one_object_scenes", "dominant_color", "color_prompts", "prompt_shape",
           "object_checks"]

"""Do generated maps obey the caption's words? The colour, shape and light checks over their
prompts, scored on the model (:func:`caption_following`) and on the world's own truth
(:func:`caption_following_of_truth`), so a table shows how much of each target this world
allows at all.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ...world.render import RenderResult
from ..model import ToyLumiX
from ..shape_check import recognised_shape
from .held_out import EvalSettings
from .light_check import left_half_mean, light_left_minus_right, light_scores, mirrored_light_pairs
from .object_checks import dominant_color, is_one_object, object_checks


def caption_following(model: ToyLumiX, settings: EvalSettings, seeds: int = 16) -> dict[str, float]:
    """Do generated maps obey the caption's words? (Cheap to fool on its own -- a model could
    paint the whole albedo red -- so read it beside the coherence scores.)

    * ``color_following``: fraction of single-object prompts (each saturated colour, sphere
      and box, two seeds) whose generated albedo's dominant colour (:func:`dominant_color`) is
      the named one.
    * ``shape_following``: of the same generations, the fraction whose object of the named
      colour reads as the named shape (:func:`lumix_core.toy.shape_check.recognised_shape`: do
      its normals fit a sphere or three flat faces better?). Half the prompts name a sphere,
      half a box, so a model that draws one blob for everything scores 0.5.
    * ``light_following``: fraction of seeds for which "light from the left" makes the left
      half of the irradiance brighter than "light from the right" (same seed, same objects) by
      at least :data:`VISIBLE_STEP`; ``light_left_minus_right`` is the mean difference (8-bit).
    """
    checks = [c for index in range(2) for c in object_checks(model, settings, index)]
    d = [light_left_minus_right(model, settings, i) for i in range(seeds)]
    return {"color_following": float(np.mean([c["color"] for c in checks])), "color_prompts": float(len(checks)),
            "shape_following": float(np.mean([c["shape"] for c in checks])), **light_scores(d)}


def caption_following_of_truth(scenes: Sequence[RenderResult], seeds: int = 16) -> dict[str, float]:
    """:func:`caption_following`'s scores on the world's own ground truth -- the check that
    the targets are reachable at all in this world (a metric the truth fails measures nothing):

    * ``color_following`` / ``shape_following``: of the held-out ``scenes``, those with one
      object of one saturated colour (what a prompt of
      :func:`lumix_core.toy.scoring.object_checks.color_prompts` describes): is the object's
      colour the dominant one of the true albedo (:func:`dominant_color`), and does the
      object read as its own shape (:func:`lumix_core.toy.shape_check.recognised_shape`)?
    * ``light_following``: the first ``seeds`` held-out scenes whose main light comes from the
      left or right, each rendered again with that light mirrored (:func:`mirrored_light_pairs`):
      does "from the left" make the left half of the true irradiance brighter than "from the
      right" by at least :data:`VISIBLE_STEP`? ``light_left_minus_right``: the mean (8-bit).
    """
    colors, shapes = [], []
    for r in filter(is_one_object, scenes):
        obj = r.spec.objects[0]
        maps = r.encode()
        colors.append(float(dominant_color(torch.from_numpy(maps["albedo"])) == obj.material.colors[0]))
        shapes.append(float(recognised_shape(maps["albedo"], maps["normal"], obj.material.colors[0]) == obj.shape))
    diffs = [left_half_mean(left) - left_half_mean(right) for left, right in mirrored_light_pairs(seeds)]
    return {"color_following": float(np.mean(colors)), "color_prompts": float(len(colors)),
            "shape_following": float(np.mean(shapes)), **light_scores(diffs)}


__all__ = ["caption_following", "caption_following_of_truth"]

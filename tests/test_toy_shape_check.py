"""The shape check (lumix_core.toy.shape_check) must name the world's own objects and give a
model that draws one blob for everything no more than chance."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lumix_core.toy.scoring.object_checks import one_object_scenes
from lumix_core.toy.shape_check import object_mask, recognised_shape, shape_residuals
from lumix_core.world.scene import PALETTE


def _one_object_scenes(count: int = 16):
    """(albedo, normal, colour, shape, color image) of held-out scenes with one flat saturated object."""
    out = []
    for r in one_object_scenes(80)[:count]:
        maps, obj = r.encode(), r.spec.objects[0]
        out.append((maps["albedo"], maps["normal"], obj.material.colors[0], obj.shape, maps["color"]))
    return out


@pytest.fixture(scope="module")
def scenes():
    found = _one_object_scenes()
    shapes = [s[3] for s in found]
    assert "sphere" in shapes and "box" in shapes, shapes
    return found


def test_the_worlds_own_objects_read_as_their_shape_with_a_margin(scenes):
    for albedo, normal, color, shape, _ in scenes:
        residuals = shape_residuals(object_mask(albedo, color), normal)
        other = "box" if shape == "sphere" else "sphere"
        assert residuals[shape] + 10.0 < residuals[other], (shape, residuals)
        assert recognised_shape(albedo, normal, color) == shape


def test_a_shapeless_normal_map_scores_no_better_than_chance(scenes):
    """Camera-facing normals, uniform noise and the color image copied into the normal slot give
    every object the same name, so the score is the share of that shape, never all of them."""
    shapes = np.array([s[3] for s in scenes])
    h, w = scenes[0][0].shape[:2]
    facing = np.broadcast_to(np.array([0.5, 0.5, 1.0], dtype=np.float32), (h, w, 3))
    g = torch.Generator().manual_seed(0)
    fakes = {"camera-facing": lambda s: facing, "noise": lambda s: torch.rand((h, w, 3), generator=g).numpy(),
             "copied color": lambda s: s[4]}
    for name, fake in fakes.items():
        named = np.array([recognised_shape(s[0], fake(s), s[2]) for s in scenes])
        assert len(set(named)) == 1, (name, named)
        score = (named == shapes).mean()
        assert score == (shapes == named[0]).mean() and score < 1.0, name


def test_no_object_of_the_colour_is_none_and_an_unknown_colour_is_refused():
    albedo = torch.tensor(PALETTE["gray"]).expand(16, 16, 3).clone()
    normal = np.full((16, 16, 3), 0.5, dtype=np.float32)
    assert object_mask(albedo, "red") is None and recognised_shape(albedo, normal, "red") is None
    albedo[5:7, 5:7] = torch.tensor(PALETTE["red"])  # 4 pixels: too small to be an object
    assert object_mask(albedo, "red") is None
    with pytest.raises(ValueError, match="unknown colour 'teal'"):
        object_mask(albedo, "teal")

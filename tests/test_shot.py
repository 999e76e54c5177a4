"""Shots: chunking is exact and bounded, stabilisation keeps what it must, the metrics measure what they say."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lumix_core import conventions
from lumix_core.shot.chunks import decompose_shot
from lumix_core.shot.stabilize import blend_moving, fuse_locked_off, rebalance_irradiance, stabilize_shot
from lumix_core.toy.model import ToyLumiX
from lumix_core.toy.shot import toy_chunk_decomposer
from lumix_core.world.dataset import scene_seed
from lumix_core.world.scene import sample_scene
from lumix_core.world.shot_metrics import flicker, temporal_error
from lumix_core.world.shots import render_shot

pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def fast_model() -> ToyLumiX:
    from lumix_core.toy.decompose import load_model

    return load_model(fast=True)


@pytest.fixture(scope="module")
def lamp_shot():
    return render_shot(sample_scene(scene_seed(3, 0)), "lamp", frames=6, size=32)


def _maps(shot) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in shot.encoded().items()}


def test_a_lamp_sweep_keeps_albedo_normals_and_depth_and_moves_the_light(lamp_shot):
    truth = lamp_shot.encoded()
    for name in ("albedo", "normal", "depth"):
        assert np.array_equal(truth[name][0], truth[name][-1]), name
    assert np.abs(truth["irradiance"][0] - truth["irradiance"][-1]).mean() > 0.01
    orbit = render_shot(sample_scene(scene_seed(3, 0)), "orbit", frames=3, size=32).encoded()
    assert np.abs(orbit["normal"][0] - orbit["normal"][-1]).mean() > 1e-3


def test_chunks_of_two_equal_one_chunk_of_all_frames(fast_model, lamp_shot):
    frames = torch.from_numpy(lamp_shot.encoded()["color"])
    decompose = toy_chunk_decomposer(fast_model)
    whole = decompose_shot(frames, decompose, chunk=len(frames))
    pairs = decompose_shot(frames, decompose, chunk=2)
    assert set(whole) == {"albedo", "irradiance", "color", "depth", "normal"}
    for name in whole:
        assert whole[name].shape[0] == len(frames)
        torch.testing.assert_close(pairs[name], whole[name], atol=1e-5, rtol=0), name


def test_multi_step_sampling_uses_one_noise_per_shot_so_chunks_are_exact():
    model = ToyLumiX.load()
    frames = torch.from_numpy(render_shot(sample_scene(scene_seed(3, 1)), "pan", frames=3, size=16).encoded()["color"])
    decompose = toy_chunk_decomposer(model, steps=2, seed=5)
    whole, single = decompose_shot(frames, decompose, 3), decompose_shot(frames, decompose, 1)
    for name in whole:
        torch.testing.assert_close(single[name], whole[name], atol=1e-5, rtol=0)
    # the same frame twice gives the same maps: the noise does not depend on the frame's place
    twice = decompose_shot(frames[:1].repeat(2, 1, 1, 1), decompose, 2)
    torch.testing.assert_close(twice["albedo"][0], twice["albedo"][1])


def test_a_hundred_frame_shot_never_gives_the_model_more_than_a_chunk(fast_model):
    frames = torch.rand(100, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    seen: list[int] = []
    original = fast_model.sample_latents

    def counting(prompts, **kw):
        seen.append(len(prompts))
        return original(prompts, **kw)

    fast_model.sample_latents = counting
    try:
        done: list[int] = []
        maps = decompose_shot(frames, toy_chunk_decomposer(fast_model), chunk=4,
                              progress=lambda d, t: done.append(d))
    finally:
        del fast_model.sample_latents
    assert max(seen) == 4 and sum(seen) == 100 and len(seen) == 25
    assert done[-1] == 100 and done == sorted(done)
    assert maps["normal"].shape == (100, 16, 16, 3)


def test_a_chunk_that_returns_the_wrong_frame_count_is_refused():
    with pytest.raises(ValueError, match="one map per frame"):
        decompose_shot(torch.zeros(3, 4, 4, 3), lambda f: {"albedo": f[:1]}, chunk=2)
    with pytest.raises(ValueError, match="at least 1"):
        decompose_shot(torch.zeros(3, 4, 4, 3), lambda f: {"albedo": f}, chunk=0)


def test_locked_off_fusion_gives_every_frame_the_shot_mean_and_keeps_albedo_times_irradiance():
    g = torch.Generator().manual_seed(1)
    maps = {k: torch.rand(5, 8, 8, 3, generator=g) * 0.8 + 0.1 for k in ("albedo", "irradiance", "color", "normal")}
    maps["depth"] = torch.rand(5, 8, 8, 1, generator=g).expand(5, 8, 8, 3)
    fused = fuse_locked_off(maps)
    for name in ("albedo", "normal", "depth"):
        assert torch.equal(fused[name][0], fused[name][-1]), name
    assert flicker(fused) == {"flicker_albedo": 0.0, "flicker_normal": 0.0, "flicker_depth": 0.0}
    mean_albedo = conventions.srgb_to_linear(maps["albedo"]).mean(dim=0)
    torch.testing.assert_close(conventions.srgb_to_linear(fused["albedo"][2]), mean_albedo, atol=1e-5, rtol=0)
    product = conventions.srgb_to_linear(maps["albedo"]) * conventions.srgb_to_linear(maps["irradiance"])
    kept = conventions.srgb_to_linear(fused["albedo"]) * conventions.srgb_to_linear(fused["irradiance"])
    unclipped = conventions.srgb_to_linear(fused["irradiance"]) < 0.999
    torch.testing.assert_close(kept[unclipped], product[unclipped], atol=1e-4, rtol=1e-3)
    assert torch.equal(fused["color"], maps["color"])


def test_rebalanced_irradiance_is_unchanged_where_albedo_is():
    irr, albedo = torch.rand(2, 4, 4, 3), torch.rand(2, 4, 4, 3)
    torch.testing.assert_close(rebalance_irradiance(irr, albedo, albedo), irr, atol=1e-5, rtol=0)


def test_blending_a_still_shot_keeps_it_and_blending_is_not_a_frozen_frame():
    shot = render_shot(sample_scene(scene_seed(3, 2)), "pan", frames=5, size=32)
    truth = _maps(shot)
    still = {k: v[:1].repeat(5, 1, 1, 1) for k, v in truth.items()}
    blended = blend_moving(still, radius=2)
    for name in ("albedo", "normal"):
        torch.testing.assert_close(blended[name], still[name], atol=2e-3, rtol=0)
    torch.testing.assert_close(blended["irradiance"], still["irradiance"])  # a moving camera's irradiance is kept
    # on the true maps of a moving shot the blend follows the motion: its temporal error stays far
    # below a frozen first frame's (which has no change at all)
    moving = blend_moving(truth, radius=2)
    frozen = {k: v[:1].expand_as(v) for k, v in truth.items()}
    assert temporal_error(moving, truth)["temporal_normal"] < 0.5 * temporal_error(frozen, truth)["temporal_normal"]


def test_stabilize_refuses_an_unknown_camera_and_missing_maps():
    maps = {k: torch.rand(2, 4, 4, 3) for k in ("albedo", "color", "depth", "normal")}
    with pytest.raises(ValueError, match="unknown camera 'tripod'"):
        stabilize_shot(maps, "tripod")
    with pytest.raises(ValueError, match="missing normal"):
        stabilize_shot({k: v for k, v in maps.items() if k != "normal"}, "locked-off")
    assert stabilize_shot(maps, "none") == maps


def test_shot_metrics_zero_for_the_truth_and_flicker_counts_change():
    shot = render_shot(sample_scene(scene_seed(3, 3)), "orbit", frames=4, size=16)
    truth = shot.encoded()
    assert all(v < 1e-9 for v in temporal_error(truth, truth).values())
    noisy = {k: np.clip(v + np.random.default_rng(0).normal(0, 0.02, v.shape), 0, 1) for k, v in truth.items()}
    assert temporal_error(noisy, truth)["temporal_normal"] > 0.5
    assert flicker(noisy)["flicker_albedo"] > flicker(truth)["flicker_albedo"]


def test_a_moving_camera_without_opencv_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)
    maps = {k: torch.rand(3, 8, 8, 3) for k in ("albedo", "color", "depth", "normal")}
    with pytest.raises(ImportError, match="pip install opencv-python.*locked-off or none"):
        stabilize_shot(maps, "moving")
    assert torch.equal(stabilize_shot(maps, "locked-off")["albedo"][0], stabilize_shot(maps, "locked-off")["albedo"][1])

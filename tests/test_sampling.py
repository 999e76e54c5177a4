"""Sampling: shared noise per scene, pinned maps, the published schedule."""
import math

import pytest
import torch
from helpers import tiny_adapter, tiny_flux

from lumix_core.maps import RELEASE
from lumix_core.model.adapter import LumiXAdapter, default_spec
from lumix_core.sampling.denoiser import FluxDenoiser, TextConditioning
from lumix_core.sampling.sampler import (
    Pinned,
    sample_euler,
    schedule,
    schedule_for,
    seq_len_for,
    shared_noise,
    shift_mu,
)

M = RELEASE.size


def published_mu(tokens):
    """BFL's get_lin_function(x1=256, y1=0.5, x2=4096, y2=1.15), written out."""
    m = (1.15 - 0.5) / (4096 - 256)
    return 0.5 + m * (tokens - 256)


@pytest.mark.parametrize("tokens", [16, 256, 1024, 4096])
def test_schedule_matches_published_shift(tokens):
    ts = schedule(50, tokens)
    mu = published_mu(tokens)
    t = torch.linspace(1, 0, 51, dtype=torch.float64)
    expected = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    torch.testing.assert_close(ts, expected, rtol=0, atol=1e-12)
    assert ts[0] == 1 and ts[-1] == 0 and bool((ts[1:] < ts[:-1]).all())


def test_release_schedule_quirk():
    assert seq_len_for(512, 512, "release") == 16 and seq_len_for(512, 512, "flux") == 1024


@pytest.mark.parametrize("width, height", [(512, 512), (1024, 1024), (1536, 1152), (192, 128), (528, 512), (64, 48)])
def test_release_token_count_floors_as_the_published_script(width, height):
    """eval/eval_lumix_inference.py: ``(W // 8) * (H // 8) // 256``; equal to the float count only where W*H is a
    multiple of 16384 (192 x 128: 1, not 1.5)."""
    assert seq_len_for(width, height, "release") == (width // 8) * (height // 8) // 256
    assert isinstance(seq_len_for(width, height, "release"), int)
    if width * height % 16384:
        assert seq_len_for(width, height, "release") != (width / 8) * (height / 8) / 256
    assert shift_mu(16) == pytest.approx(0.459, abs=1e-3) and shift_mu(1024) == pytest.approx(0.63, abs=1e-3)
    torch.testing.assert_close(schedule_for(512, 512, 50, "release"), schedule(50, 16))
    torch.testing.assert_close(schedule_for(512, 512, 50, "flux"), schedule(50, 1024))
    torch.testing.assert_close(schedule_for(512, 512, 4, "linear"), torch.linspace(1, 0, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_for(512, 512, 4, "karras")


def test_all_maps_of_a_scene_share_noise():
    noise = shared_noise(3, RELEASE, (16, 8, 8), seed=7)
    assert noise.shape == (3 * M, 16, 8, 8)
    for s in range(3):
        scene = noise[s * M:(s + 1) * M]
        assert all(torch.equal(scene[0], scene[i]) for i in range(M))
    assert not torch.equal(noise[0], noise[M])
    assert torch.equal(noise, shared_noise(3, RELEASE, (16, 8, 8), seed=7))


def cond(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TextConditioning(torch.randn(n, 4, 32, generator=g), torch.randn(n, 16, generator=g))


def test_pinned_map_comes_back_bit_identical_and_others_move():
    model = tiny_flux()
    model.attach(tiny_adapter(model))
    clean = torch.randn(2, 16, 8, 8)
    pinned = Pinned.slot(RELEASE, "color", clean)
    noise = shared_noise(2, RELEASE, (16, 8, 8), seed=1)
    seen_t = []

    def spy(x, t, c, guidance):
        seen_t.append(t.clone())
        return FluxDenoiser(model)(x, t, c, guidance)

    with torch.no_grad():
        out = sample_euler(spy, noise, schedule_for(64, 64, 3), cond(2), uncond=cond(1, 9), true_cfg=3.0,
                           pinned=pinned, group=M)
    qi = RELEASE.query_index
    assert torch.equal(out[qi], clean[0]) and torch.equal(out[M + qi], clean[1])
    assert len(seen_t) == 6  # cond and uncond passes at every step
    assert all(bool((t[pinned.mask] == 0).all()) and bool((t[~pinned.mask] > 0).all()) for t in seen_t)
    assert not torch.equal(out[0], noise[0])


def test_group_of_identical_maps_samples_like_one_map():
    """Zero adapter + shared noise + same prompt: every map of the group is the plain FLUX sample."""
    model = tiny_flux()
    maps = RELEASE
    adapter = LumiXAdapter(default_spec(maps=maps, rank=4, hidden=64, double_blocks=2, single_blocks=2))
    noise = shared_noise(1, maps, (16, 8, 8), seed=3)
    ts = schedule_for(64, 64, 3)
    with torch.no_grad():
        plain = sample_euler(FluxDenoiser(model), noise[:1], ts, cond(1), uncond=cond(1, 5), true_cfg=2.0)
        with model.attached(adapter):
            grouped = sample_euler(FluxDenoiser(model), noise, ts, cond(1), uncond=cond(1, 5), true_cfg=2.0,
                                   group=M)
    for i in range(M):
        torch.testing.assert_close(grouped[i], plain[0], rtol=1e-4, atol=1e-5)


def test_two_scenes_sample_like_two_separate_runs():
    model = tiny_flux()
    model.attach(tiny_adapter(model))
    noise = shared_noise(2, RELEASE, (16, 8, 8), seed=4)
    ts = schedule_for(64, 64, 2)
    c, u = cond(2), cond(1, 8)
    with torch.no_grad():
        joint = sample_euler(FluxDenoiser(model), noise, ts, c, uncond=u, true_cfg=3.0, group=M)
        for s in range(2):
            one = TextConditioning(c.txt[s:s + 1], c.y[s:s + 1])
            sep = sample_euler(FluxDenoiser(model), noise[s * M:(s + 1) * M], ts, one, uncond=u, true_cfg=3.0,
                               group=M)
            torch.testing.assert_close(joint[s * M:(s + 1) * M], sep, rtol=1e-4, atol=1e-5)


def test_conditioning_count_must_fit_scenes():
    with pytest.raises(ValueError, match="conditioning for 3 prompts does not fit 2 scenes of 5 maps"):
        cond(3).per_item(10, 5)
    with pytest.raises(ValueError, match="not a multiple of the map count"):
        sample_euler(lambda *a: a[0], torch.zeros(7, 1, 2, 2), schedule(2, shift=False), None, group=5)

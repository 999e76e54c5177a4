"""The flow-matching batch: shared noise per scene, photo conditioning, timestep samplers, LR."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lumix_core.sampling.sampler import seq_len_for, shift_mu
from lumix_core.train.lr_schedule import WarmupSchedule
from lumix_core.train.objective import DrawSettings, draw_scene, make_noisy_batch, sample_generator, scene_losses
from lumix_core.train.timesteps import sample_timestep


def test_one_noise_and_one_timestep_per_scene():
    x0 = torch.randn(2, 3, 16, 4, 4)
    draws = [draw_scene(0, p, (16, 4, 4), DrawSettings()) for p in (10, 11)]
    batch = make_noisy_batch(x0, draws, query_index=1)
    x_t = batch.x_t.reshape(2, 3, 16, 4, 4)
    t = batch.t.reshape(2, 3)
    for b in range(2):
        assert torch.all(t[b] == draws[b].t)
        eps = (x_t[b] - (1 - draws[b].t) * x0[b]) / draws[b].t  # recover the noise of every map
        assert torch.allclose(eps, draws[b].noise.expand(3, -1, -1, -1), atol=1e-5)
    target = batch.target.reshape(2, 3, 16, 4, 4)
    assert torch.allclose(target, torch.stack([d.noise for d in draws])[:, None] - x0)
    assert torch.all(batch.weight == 1)
    assert draws[0].t != draws[1].t and not torch.equal(draws[0].noise, draws[1].noise)


def test_photo_conditioning_feeds_the_clean_color_at_t0_and_drops_it_from_the_loss():
    settings = DrawSettings(photo_conditioning_prob=1.0)
    x0 = torch.randn(1, 3, 16, 2, 2)
    draw = draw_scene(0, 5, (16, 2, 2), settings)
    assert draw.photo
    batch = make_noisy_batch(x0, [draw], query_index=1)
    assert torch.equal(batch.x_t[1], x0[0, 1]) and batch.t[1] == 0
    assert batch.weight.tolist() == [[1.0, 0.0, 1.0]]
    wrong_color = batch.target.clone()
    wrong_color[1] += 100.0  # a terrible color prediction costs nothing ...
    assert scene_losses(batch.target, batch).item() == 0.0
    assert scene_losses(wrong_color, batch).item() == 0.0
    wrong_depth = batch.target.clone()
    wrong_depth[2] += 1.0  # ... the other maps count, averaged over the two of them
    assert scene_losses(wrong_depth, batch).item() == pytest.approx(0.5)


def test_draws_depend_only_on_seed_and_position():
    s = DrawSettings(caption_dropout=0.5, photo_conditioning_prob=0.5)
    a, b = draw_scene(3, 42, (16, 2, 2), s), draw_scene(3, 42, (16, 2, 2), s)
    assert torch.equal(a.noise, b.noise) and (a.t, a.drop_caption, a.photo) == (b.t, b.drop_caption, b.photo)
    flips = [draw_scene(3, p, (16, 2, 2), s).drop_caption for p in range(400)]
    assert 150 < sum(flips) < 250
    assert not torch.equal(draw_scene(4, 42, (16, 2, 2), s).noise, a.noise)


def test_timestep_samplers():
    g = sample_generator(0, 0)
    logit = np.array([sample_timestep("logit-normal", g, width=512, height=512) for _ in range(4000)])
    assert logit.min() > 0 and logit.max() < 1
    assert abs(np.median(logit) - 0.5) < 0.03  # sigmoid(N(0, 1)): symmetric around 1/2
    assert 0.05 < np.mean(logit < 0.25) < 0.2  # P(n < logit(0.25) = -1.1) = 0.136
    shifted = np.array([sample_timestep("shifted", g, width=1024, height=1024, shift_schedule="flux")
                        for _ in range(4000)])
    mu = shift_mu(seq_len_for(1024, 1024, "flux"))
    # Median of u is 1/2, and the shift maps 1/2 to e^mu / (e^mu + 1): more noise at high resolution.
    assert abs(np.median(shifted) - math.exp(mu) / (math.exp(mu) + 1)) < 0.02
    release = np.median([sample_timestep("shifted", g, width=512, height=512) for _ in range(2000)])
    assert release < np.median(shifted)
    with pytest.raises(ValueError, match="unknown timestep sampler"):
        sample_timestep("uniform", g, width=512, height=512)


def test_warmup_then_cosine():
    s = WarmupSchedule(4, 12, "cosine")
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(7) == pytest.approx(0.5) and s(11) == pytest.approx(0.0)
    assert [WarmupSchedule(0, 10)(i) for i in (0, 9)] == [1.0, 1.0]

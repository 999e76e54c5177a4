"""The one-step decomposition objective: its batch, its losses, the trainer runs it, and the
one-step call at inference is exactly the step the trainer optimised."""
from __future__ import annotations

import pytest
import torch
from helpers import tiny_adapter, tiny_flux
from train_helpers import fit_config, interrupted_and_resumed, synthetic_cache, tiny_flux_file

from lumix_core.maps import RELEASE
from lumix_core.model.checkpoint import (
    META_OBJECTIVE,
    OBJECTIVE_FLOW_MATCHING,
    OBJECTIVE_ONE_STEP,
    adapter_objective,
    inspect_adapter,
    load_adapter,
)
from lumix_core.sampling.denoiser import FluxDenoiser, TextConditioning
from lumix_core.sampling.sampler import decompose_one_step
from lumix_core.toy.vae import ToyVAEDecoder
from lumix_core.train.config import ConfigError
from lumix_core.train.curves import EVALUATIONS, read_jsonl
from lumix_core.train.fit import run_fit
from lumix_core.train.one_step import (
    DETAIL_WINDOW,
    detail_weights,
    make_one_step_batch,
    one_step_losses,
    pixel_terms,
    predicted_clean,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_step")
    return root, synthetic_cache(root / "cache", scenes=4, size=4), tiny_flux_file(root / "flux.safetensors")


def test_one_step_batch_pins_the_photo_and_feeds_zero_to_the_other_maps():
    x0 = torch.randn(2, 5, 16, 4, 4)
    b = make_one_step_batch(x0, RELEASE.query_index)
    x_t = b.x_t.reshape(2, 5, 16, 4, 4)
    assert torch.equal(x_t[:, 2], x0[:, 2]) and not x_t[:, [0, 1, 3, 4]].any()
    assert b.t.reshape(2, 5).tolist() == [[1.0, 1.0, 0.0, 1.0, 1.0]] * 2
    assert b.weight.tolist() == [[1.0, 1.0, 0.0, 1.0, 1.0]] * 2
    assert torch.equal(b.target.reshape(x0.shape), x0)
    # x0 = x_t - t v: the photo's item is its own input whatever v is; the others are -v.
    v = torch.randn_like(b.x_t)
    pred = predicted_clean(v, b).reshape(x0.shape)
    assert torch.equal(pred[:, 2], x0[:, 2]) and torch.equal(pred[:, 0], -v.reshape(x0.shape)[:, 0])


@pytest.mark.parametrize("space", ["latent", "pixel", "both"])
def test_one_step_loss_is_zero_for_the_truth_and_positive_otherwise(space):
    x0 = torch.randn(2, 5, 16, 4, 4)
    b = make_one_step_batch(x0, RELEASE.query_index)
    perfect = (b.x_t - b.target) / b.t.clamp_min(1e-9)[:, None, None, None]  # v with x_t - t v = x0 (t=1 items)
    perfect[b.t == 0] = 0.0
    decode = ToyVAEDecoder().decode_for_loss
    zero = one_step_losses(perfect, b, RELEASE, space, decode)
    assert zero.shape == (2,) and float(zero.abs().max()) < 1e-5
    worse = one_step_losses(perfect + 0.3 * torch.randn_like(perfect), b, RELEASE, space, decode)
    assert bool((worse > 1e-3).all())
    # The photo is not scored: changing only its item's prediction leaves the loss alone.
    colour_only = perfect.clone()
    colour_only[b.t == 0] = 5.0
    assert torch.allclose(one_step_losses(colour_only, b, RELEASE, space, decode), zero, atol=1e-6)


def test_pixel_depth_term_ignores_scale_and_shift_but_not_layout():
    true = torch.rand(1, 8, 8, 3) * 2 - 1
    affine = pixel_terms(0.5 * true + 0.2, true, "depth")
    shuffled = pixel_terms(true.flip(1), true, "depth")
    assert float(affine) < 0.2 * float(shuffled)
    # Normals: angular, so a longer vector in the same direction costs only the small MSE anchor.
    n = torch.nn.functional.normalize(torch.randn(1, 8, 8, 3), dim=-1)
    assert float(pixel_terms(1.2 * n, n, "normal")) < 0.1 * float(pixel_terms(-n, n, "normal"))


def _floor_with_a_sphere(size: int = 32, radius: float = 6.0) -> torch.Tensor:
    """True normals ``[1, size, size, 3]``: an upward-tilted plane with a head-on sphere in it."""
    n = torch.tensor([0.0, 0.8, 0.6]).expand(size, size, 3).clone()
    yy, xx = torch.meshgrid(torch.arange(size) - size / 2 + 0.5, torch.arange(size) - size / 2 + 0.5, indexing="ij")
    inside = xx ** 2 + yy ** 2 < radius ** 2
    x, y = xx / radius, -yy / radius
    sphere = torch.stack([x, y, (1 - x ** 2 - y ** 2).clamp_min(0).sqrt()], dim=-1)
    n[inside] = sphere[inside]
    return n[None], inside


def test_detail_weights_leave_planes_alone_and_lift_curved_objects():
    n, inside = _floor_with_a_sphere()
    w = detail_weights(n, 10.0)
    assert w.shape == (1, 32, 32) and torch.allclose(w.mean(), torch.tensor(1.0))
    far = torch.ones(32, 32, dtype=torch.bool)
    far[16 - 6 - DETAIL_WINDOW: 16 + 6 + DETAIL_WINDOW, 16 - 6 - DETAIL_WINDOW: 16 + 6 + DETAIL_WINDOW] = False
    plane = w[0][far]
    assert torch.allclose(plane, plane[0].expand_as(plane)), "every pixel of a plane weighs the same"
    assert float(w[0][inside].mean()) > 2.0 * float(plane[0]), "a sphere's pixels weigh more than the plane's"
    # A plain plane everywhere: weights 1, so the strength changes nothing where there is no detail.
    flat = torch.tensor([0.0, 0.8, 0.6]).expand(1, 8, 8, 3)
    assert torch.allclose(detail_weights(flat, 10.0), torch.ones(1, 8, 8))


def test_detail_weight_moves_the_normal_loss_towards_the_object():
    n, inside = _floor_with_a_sphere()
    wrong_object = n.clone()
    wrong_object[0][inside] = torch.tensor([0.0, 0.8, 0.6])  # the sphere drawn flat, as faint objects are
    wrong_plane = n.clone()
    wrong_plane[0][~inside] = torch.nn.functional.normalize(torch.tensor([0.3, 0.8, 0.6]), dim=0)
    plain = [float(pixel_terms(p, n, "normal")) for p in (wrong_object, wrong_plane)]
    weighted = [float(pixel_terms(p, n, "normal", detail_weight=10.0)) for p in (wrong_object, wrong_plane)]
    assert weighted[0] / weighted[1] > 2.0 * plain[0] / plain[1]
    assert float(pixel_terms(n, n, "normal", detail_weight=10.0)) < 1e-6, "the truth still costs nothing"
    # Other maps are untouched by it.
    d = torch.rand(1, 8, 8, 3)
    assert torch.equal(pixel_terms(d * 0.5, d, "albedo", detail_weight=10.0), pixel_terms(d * 0.5, d, "albedo"))


def test_decompose_one_step_is_one_literal_model_call():
    model = tiny_flux(seed=3)
    model.attach(tiny_adapter(model, RELEASE, seed=4))
    den = FluxDenoiser(model)
    color = torch.randn(2, 16, 4, 4)
    cond = TextConditioning(torch.randn(2, 3, model.config.context_in_dim), torch.randn(2, model.config.vec_in_dim))
    with torch.no_grad():
        out = decompose_one_step(den, color, RELEASE, cond)
        b = make_one_step_batch(torch.stack([color] * 5, dim=1), RELEASE.query_index)
        literal = predicted_clean(den(b.x_t, b.t, cond, 1.0), b)
    assert torch.equal(out.reshape(2, 5, 16, 4, 4)[:, 2], color), "the photo comes back bit-identical"
    assert torch.allclose(out, literal, atol=1e-6), float((out - literal).abs().max())


def test_fit_one_step_learns_records_its_objective_and_resumes_exactly(files, tmp_path):
    root, cache, flux = files
    kw = dict(objective="one-step", steps=6, batch_size=3, checkpoint_every=3, lr=1e-2, holdout=1,
              validate_every=3)
    full = run_fit(fit_config(tmp_path, cache, flux, name="full", **kw))
    # Every step sees the same 3 training scenes and nothing is random: the losses compare.
    assert full.losses[-1] < 0.97 * full.losses[0], full.losses
    info = inspect_adapter(full.adapter_path)
    assert info.metadata[META_OBJECTIVE] == OBJECTIVE_ONE_STEP and adapter_objective(info) == OBJECTIVE_ONE_STEP
    rows = read_jsonl(tmp_path / "full" / EVALUATIONS)
    assert [r["step"] for r in rows] == [3, 6] and all("holdout_loss" in r and "holdout_loss_photo" not in r
                                                        for r in rows)
    assert (tmp_path / "full" / "validation" / "step-00000006.png").is_file()

    resumed = interrupted_and_resumed(tmp_path, cache, flux, stop_at=4, **kw)
    assert resumed.steps == 6 and len(resumed.losses) == 3  # resumed from the step-3 checkpoint
    a, b = load_adapter(full.adapter_path).state_dict(), load_adapter(resumed.adapter_path).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed one-step run differs from the uninterrupted one"


def test_flow_matching_adapters_say_so_and_old_files_read_as_flow_matching(files, tmp_path):
    root, cache, flux = files
    result = run_fit(fit_config(tmp_path, cache, flux, steps=1))
    assert inspect_adapter(result.adapter_path).metadata[META_OBJECTIVE] == OBJECTIVE_FLOW_MATCHING
    from lumix_core.model.checkpoint import save_adapter

    old = save_adapter(load_adapter(result.adapter_path), tmp_path / "old.safetensors")  # no objective key
    assert META_OBJECTIVE not in inspect_adapter(old).metadata
    assert adapter_objective(inspect_adapter(old)) == OBJECTIVE_FLOW_MATCHING


def test_pixel_losses_without_a_differentiable_decoder_are_refused_with_the_fix(files, tmp_path):
    root, cache, flux = files
    with pytest.raises(ConfigError, match="use --one-step-loss latent"):
        run_fit(fit_config(tmp_path, cache, flux, objective="one-step", one_step_loss="pixel", steps=1))
    assert not (tmp_path / "run").exists(), "a refused run leaves no output folder"
    with pytest.raises(ConfigError, match="objective must be one of flow-matching, one-step"):
        run_fit(fit_config(tmp_path, cache, flux, objective="onestep", steps=1))
    for kw in ({"objective": "one-step", "one_step_loss": "latent"}, {"one_step_loss": "both"}):
        with pytest.raises(ConfigError, match="needs --objective one-step with --one-step-loss pixel or both"):
            run_fit(fit_config(tmp_path, cache, flux, one_step_detail_weight=5.0, steps=1, **kw))
    with pytest.raises(ConfigError, match="one_step_detail_weight must be >= 0"):
        run_fit(fit_config(tmp_path, cache, flux, objective="one-step", one_step_loss="both",
                           one_step_detail_weight=-1.0, steps=1))


def test_pixel_losses_train_with_the_toy_decoder(files, tmp_path):
    root, cache, flux = files
    kw = dict(objective="one-step", one_step_loss="both", steps=6, batch_size=4, lr=1e-2)
    result = run_fit(fit_config(tmp_path, cache, flux, **kw), decoder=ToyVAEDecoder())
    assert result.losses[-1] < 0.97 * result.losses[0], result.losses  # the same 4 scenes every step
    # The detail weight acts on normals: a cache of the release maps (with a normal map), both ways.
    release = synthetic_cache(tmp_path / "release_cache", maps=RELEASE, scenes=4, size=4)
    plain, detail = (run_fit(fit_config(tmp_path, release, flux, name=f"detail{w}", one_step_detail_weight=w, **kw),
                             decoder=ToyVAEDecoder()) for w in (0.0, 5.0))
    assert detail.losses[-1] < 0.97 * detail.losses[0], detail.losses
    assert detail.losses[0] != plain.losses[0], "the detail weight reaches the loss the trainer optimises"

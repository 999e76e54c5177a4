"""``fit`` on a tiny FLUX and synthetic scenes: learning, frozen backbone, exact resume, files."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from train_helpers import MAPS3, fit_config, interrupted_and_resumed, synthetic_cache, tiny_flux_file

from lumix_core.model.checkpoint import ModelShape, inspect_adapter, load_adapter
from lumix_core.model.flux_io import load_flux
from lumix_core.sampling.denoiser import FluxDenoiser, TextConditioning
from lumix_core.train.cache import LatentCache
from lumix_core.train.cli import main as train_main
from lumix_core.train.config import ConfigError
from lumix_core.train.curves import CURVES_CSV, CURVES_PNG, EVALUATIONS, read_jsonl
from lumix_core.train.fit import METRICS, RUN_CONFIG, run_fit
from lumix_core.train.objective import DrawSettings, draw_scene, make_noisy_batch, scene_losses
from lumix_core.train.state import ADAPTER_FILE, latest_checkpoint
from lumix_core.train.validation import LABEL_HEIGHT


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    return root, synthetic_cache(root / "cache", scenes=4, size=4), tiny_flux_file(root / "flux.safetensors")


def _adapter_tensors(path):
    return {k: v.clone() for k, v in load_adapter(path).state_dict().items()}


def _eval_loss(flux, cache_path, adapter=None) -> float:
    """Flow-matching loss on fixed held-out draws (positions the run never uses)."""
    model = load_flux(flux)
    cache = LatentCache(cache_path)
    if adapter is not None:
        model.attach(adapter)
    denoise, losses = FluxDenoiser(model), []
    with torch.no_grad():
        for i in range(len(cache)):
            s = cache.scene(i)
            for k in range(6):
                draw = draw_scene(99, 10**6 + 10 * i + k, tuple(s.latents.shape[1:]), DrawSettings())
                batch = make_noisy_batch(s.latents[None], [draw], cache.maps.query_index)
                v = denoise(batch.x_t, batch.t, TextConditioning(s.txt[None], s.y[None]), 1.0)
                losses.append(float(scene_losses(v, batch)[0]))
    return float(np.mean(losses))


def test_fit_lowers_the_loss_and_changes_only_the_adapter(files, tmp_path):
    root, cache, flux = files
    before = load_flux(flux).state_dict()
    result = run_fit(fit_config(tmp_path, cache, flux, steps=40, batch_size=2, lr=3e-2))
    # Backbone: bit-identical to the file, and frozen.
    after = result.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in result.model.parameters())
    # Adapter: every G3 (zero at init) moved; the optimizer trained only adapter tensors.
    assert all(lora.G3.abs().max() > 0 for lora in result.adapter.tensor_loras())
    # Learning: training loss (same seeds every run) and a held-out evaluation both drop clearly.
    L = result.losses
    assert len(L) == 40
    assert np.mean(L[-10:]) < 0.85 * np.mean(L[:10]), (np.mean(L[:10]), np.mean(L[-10:]))
    base = _eval_loss(flux, cache)  # fresh adapter = no-op (G3 = 0): plain FLUX
    trained = _eval_loss(flux, cache, load_adapter(result.adapter_path))
    assert trained < 0.8 * base, (base, trained)


def test_interrupted_and_resumed_run_equals_uninterrupted(files, tmp_path):
    root, cache, flux = files
    kw = dict(steps=6, grad_accum=2, checkpoint_every=3, caption_dropout=0.5, photo_conditioning_prob=0.5,
              timestep_sampler="shifted", warmup_steps=2, lr_schedule="cosine")
    full = run_fit(fit_config(tmp_path, cache, flux, name="full", **kw))
    resumed = interrupted_and_resumed(tmp_path, cache, flux, stop_at=4, **kw)
    assert latest_checkpoint(tmp_path / "cut").name == "step-00000006"  # the resume's final checkpoint
    assert resumed.steps == 6 and len(resumed.losses) == 3
    a, b = _adapter_tensors(full.adapter_path), _adapter_tensors(resumed.adapter_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed adapter differs from the uninterrupted one"
    # Metrics: step 4 of the cut run was trimmed on resume; the losses match step for step.
    rows = lambda run: [json.loads(l) for l in (tmp_path / run / METRICS).read_text().splitlines()]  # noqa: E731
    assert [r["step"] for r in rows("cut")] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows("cut")] == [r["loss"] for r in rows("full")]


def test_gradient_accumulation_equals_a_larger_batch(files, tmp_path):
    root, cache, flux = files
    big = run_fit(fit_config(tmp_path, cache, flux, name="b2", steps=3, batch_size=2))
    acc = run_fit(fit_config(tmp_path, cache, flux, name="a2", steps=3, batch_size=1, grad_accum=2))
    a, b = _adapter_tensors(big.adapter_path), _adapter_tensors(acc.adapter_path)
    # Same scenes and draws; only float summation order differs (Adam normalises tiny gradient noise).
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_gradient_checkpointing_trains_the_same_adapter(files, tmp_path):
    root, cache, flux = files
    plain = run_fit(fit_config(tmp_path, cache, flux, name="plain", steps=3, gradient_checkpointing=False))
    ckpt = run_fit(fit_config(tmp_path, cache, flux, name="ckpt", steps=3, gradient_checkpointing=True))
    a, b = _adapter_tensors(plain.adapter_path), _adapter_tensors(ckpt.adapter_path)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert plain.losses == ckpt.losses


def test_checkpoints_load_as_adapters_with_metadata(files, tmp_path):
    root, cache, flux = files
    result = run_fit(fit_config(tmp_path, cache, flux, steps=2, checkpoint_every=1, keep_checkpoints=1))
    info = inspect_adapter(result.adapter_path)
    assert info.metadata["lumix.modalities"] == MAPS3.to_string()
    assert info.metadata["lumix.rank"] == "4"
    assert info.metadata["lumix.alpha"] == "none"
    assert info.metadata["lumix.train.step"] == "2"
    assert info.metadata["lumix.train.base_model"] == "flux.safetensors"
    adapter = load_adapter(result.adapter_path, ModelShape(64, 2, 2), maps=MAPS3, rank=4)
    assert adapter.spec.maps == MAPS3
    # keep_checkpoints=1: only the newest step folder stays; its adapter loads too.
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert steps == ["step-00000002"]
    ckpt = load_adapter(tmp_path / "run" / "checkpoints" / steps[0] / ADAPTER_FILE, ModelShape(64, 2, 2))
    assert all(torch.equal(ckpt.state_dict()[k], adapter.state_dict()[k]) for k in adapter.state_dict())
    saved = json.loads((tmp_path / "run" / RUN_CONFIG).read_text())
    assert saved["config"]["steps"] == 2 and saved["config"]["rank"] == 4


def test_validation_sheet_is_written_with_a_pluggable_decoder(files, tmp_path):
    import cv2

    root, cache, flux = files

    class CountingDecoder:
        calls = 0

        def decode_latents(self, latents):
            CountingDecoder.calls += 1
            return torch.full((latents.shape[0], 40, 24, 3), 0.5)

    run_fit(fit_config(tmp_path, cache, flux, name="preview", steps=2, validate_every=1, validation_scenes=2))
    sheets = sorted((tmp_path / "preview" / "validation").glob("*.png"))
    assert [p.name for p in sheets] == ["step-00000001.png", "step-00000002.png"]
    img = cv2.imread(str(sheets[0]))
    # Preview decoder: 2 scenes x 3 maps of 4x4 latents enlarged 8x, then 2x so that the map
    # names fit in the label strip above the columns; 4-pixel gaps.
    assert img.shape == (LABEL_HEIGHT + 2 * 64 + 4, 3 * 64 + 2 * 4, 3)
    assert (img[:LABEL_HEIGHT] < 128).any()  # the labels are drawn
    assert b"albedo,color,depth" in sheets[0].read_bytes()

    run_fit(fit_config(tmp_path, cache, flux, name="custom", steps=1, validate_every=1, validation_scenes=1),
            decoder=CountingDecoder())
    assert CountingDecoder.calls == 1
    # 24-pixel-wide tiles are enlarged 2x for the labels
    assert cv2.imread(str(tmp_path / "custom" / "validation" / "step-00000001.png")).shape == (
        LABEL_HEIGHT + 2 * 40, 3 * 48 + 2 * 4, 3)


def test_output_folder_is_never_overwritten_unless_asked(files, tmp_path):
    root, cache, flux = files
    run_fit(fit_config(tmp_path, cache, flux, steps=1))
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_fit(fit_config(tmp_path, cache, flux, steps=1))
    result = run_fit(fit_config(tmp_path, cache, flux, steps=2, overwrite=True))
    assert result.steps == 2
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a lumix-train run"):
        run_fit(fit_config(tmp_path, cache, flux, name="foreign", steps=1, overwrite=True))
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_resume_refuses_changed_training_settings(files, tmp_path):
    root, cache, flux = files
    run_fit(fit_config(tmp_path, cache, flux, steps=1, checkpoint_every=1))
    with pytest.raises(ConfigError, match="lr: run has 0.003, given 0.1"):
        run_fit(fit_config(tmp_path, cache, flux, steps=2, lr=0.1, resume=True))
    # --steps may grow: the run continues from its checkpoint.
    more = run_fit(fit_config(tmp_path, cache, flux, steps=2, resume=True))
    assert more.steps == 2 and len(more.losses) == 1


def test_cache_for_another_model_is_refused(files, tmp_path):
    root, cache, _ = files
    from lumix_core.model.flux import Flux, tiny_config
    from lumix_core.model.flux_io import save_flux

    other = save_flux(Flux(tiny_config(context_in_dim=48, vec_in_dim=16)), tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="text features 32 vs the model's context_in_dim 48"):
        run_fit(fit_config(tmp_path, cache, other, steps=1))


def test_holdout_scenes_are_never_trained_on_and_are_scored_with_curves(files, tmp_path):
    """--holdout keeps the cache's last scenes out of the data order, scores their loss at
    every validation (plus an evaluator's scores), and the curves are rebuilt from the logs --
    also after a resume, which trims evaluations past the checkpoint."""
    import csv

    root, cache, flux = files
    seen = []

    def evaluator(model, step):
        assert model.lumix is not None  # the adapter is attached while evaluating
        seen.append(step)
        return {"toy_score": float(step)}

    config = fit_config(tmp_path, cache, flux, name="held", steps=4, validate_every=2, checkpoint_every=2, holdout=1)
    result = run_fit(config, evaluator=evaluator)
    run = tmp_path / "held"
    assert seen == [2, 4]
    evaluations = read_jsonl(run / EVALUATIONS)
    assert [e["step"] for e in evaluations] == [2, 4]
    assert all(np.isfinite(e["holdout_loss"]) and np.isfinite(e["holdout_loss_photo"]) for e in evaluations)
    with open(run / CURVES_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert {"train_loss", "holdout_loss", "holdout_loss_photo", "toy_score"} <= set(rows[0])
    assert (run / CURVES_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the held-out scene (the cache's last) is never drawn by the data order
    from lumix_core.train.fit import DataOrder

    order = DataOrder(len(LatentCache(cache)) - 1, config.seed)
    assert len(LatentCache(cache)) - 1 not in {order(p) for p in range(4 * config.batch_size * 8)}
    assert result.steps == 4

    # resume from step 2 after the step-4 evaluation was logged: the log is trimmed, then regrown
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    (run / "checkpoints" / "latest.txt").write_text("step-00000002\n")
    run_fit(replace(config, resume=True, steps=4), evaluator=evaluator)
    assert [e["step"] for e in read_jsonl(run / EVALUATIONS)] == [2, 4]


def test_holdout_must_leave_scenes_to_train_on(files, tmp_path):
    root, cache, flux = files
    with pytest.raises(ConfigError, match="holdout"):
        run_fit(fit_config(tmp_path, cache, flux, name="none", steps=1, holdout=len(LatentCache(cache))))


def _killed_while_starting(out):
    """What a run killed before train_config.json existed leaves: the temp copy of that file."""
    out.mkdir()
    partial = out / f".{RUN_CONFIG}.k3x9q2.tmp"
    partial.write_text('{"format": "lumix-tr')
    return partial


def test_run_killed_before_its_config_restarts_and_resume_says_how(files, tmp_path, capsys):
    root, cache, flux = files
    out = tmp_path / "run"
    partial = _killed_while_starting(out)
    args = ["fit", "--cache", str(cache), "--flux", str(flux), "--output", str(out), "--steps", "1",
            "--no-gradient-checkpointing", "--validate-every", "0", "--device", "cpu"]
    assert train_main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert f"--resume: {out} holds no run (no {RUN_CONFIG})" in err and "a fresh start cleans it up" in err
    assert "start one without --resume" in err and partial.exists()
    assert train_main(args) == 0  # a fresh start takes the folder over
    assert not partial.exists() and json.loads((out / RUN_CONFIG).read_text())["config"]["steps"] == 1
    # --overwrite accepts such a folder too.
    partial = _killed_while_starting(tmp_path / "run2")
    assert train_main(args[:6] + [str(tmp_path / "run2")] + args[7:] + ["--overwrite"]) == 0
    assert not partial.exists() and (tmp_path / "run2" / "adapter.safetensors").is_file()


def test_a_foreign_temp_file_does_not_make_a_folder_ours(files, tmp_path):
    root, cache, flux = files
    out = tmp_path / "run"
    _killed_while_starting(out)
    (out / ".notes.tmp").write_text("someone else's")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError):
            run_fit(fit_config(tmp_path, cache, flux, steps=1, overwrite=overwrite))
    assert (out / ".notes.tmp").read_text() == "someone else's"


def test_resume_deletes_stale_temp_files_of_the_run(files, tmp_path):
    root, cache, flux = files
    run_fit(fit_config(tmp_path, cache, flux, steps=1, checkpoint_every=1))
    out = tmp_path / "run"
    stale = [out / ".metrics.jsonl.a1b2c3.tmp", out / "checkpoints" / ".latest.txt.d4e5f6.tmp",
             out / "checkpoints" / ".step-00000002.tmp" / "rng-rank0.safetensors"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    (out / "notes.tmp").write_text("not ours: no leading dot")
    run_fit(fit_config(tmp_path, cache, flux, steps=2, checkpoint_every=1, resume=True))
    assert not any(p.exists() for p in stale) and not (out / "checkpoints" / ".step-00000002.tmp").exists()
    assert (out / "notes.tmp").read_text() == "not ours: no leading dot"
    assert latest_checkpoint(out).name == "step-00000002"


def test_a_png_as_flux_is_named_and_no_run_folder_is_left(files, tmp_path, capsys):
    root, cache, _ = files
    from PIL import Image

    png = tmp_path / "flux1-dev.safetensors"
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    out = tmp_path / "run"
    assert train_main(["fit", "--cache", str(cache), "--flux", str(png), "--output", str(out), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "flux1-dev.safetensors: this file is a PNG image, not a safetensors weights file" in err
    assert "check the path" in err and err.count("\n") == 1
    assert not out.exists()  # a corrected rerun is not refused for a half-started run

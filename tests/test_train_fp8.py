"""``fit --base-dtype fp8``: the tiny FLUX trains with fp8 block weights (fp32 compute on the CPU),
and fp8 composes with gradient checkpointing, accumulation and exact resume (torchrun:
tests/test_train_ddp.py); unusable files are refused in one line."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from test_fp8 import comfy_fp8_file
from test_train_fit import _adapter_tensors
from train_helpers import fit_config, interrupted_and_resumed, synthetic_cache, tiny_flux_file

from lumix_core.model.flux_io import load_flux
from lumix_core.model.fp8 import FP8, Fp8Linear
from lumix_core.train.cli import main as train_main
from lumix_core.train.config import ConfigError
from lumix_core.train.fit import METRICS, RUN_CONFIG, run_fit

FP8_RUN = dict(base_dtype="fp8")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit_fp8")
    return root, synthetic_cache(root / "cache", scenes=4, size=4), tiny_flux_file(root / "flux.safetensors")


def _max_difference(a, b) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_the_command_trains_with_fp8_block_weights(files, tmp_path):
    root, cache, flux = files
    out = tmp_path / "run"
    args = ["fit", "--cache", str(cache), "--flux", str(flux), "--output", str(out), "--base-dtype", "fp8",
            "--steps", "12", "--lr", "3e-2", "--warmup-steps", "0", "--rank", "4", "--caption-dropout", "0",
            "--checkpoint-every", "0", "--validate-every", "0", "--validation-steps", "2", "--device", "cpu"]
    assert train_main(args) == 0
    assert json.loads((out / RUN_CONFIG).read_text())["config"]["base_dtype"] == "fp8"
    losses = [json.loads(line)["loss"] for line in (out / METRICS).read_text().splitlines()]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) < sum(losses[:4])
    trained = _adapter_tensors(out / "adapter.safetensors")
    assert all(float(v.abs().max()) > 0 for k, v in trained.items() if k.endswith("G3"))  # G3 starts at 0


def test_fp8_run_keeps_the_quantized_backbone_frozen(files, tmp_path):
    root, cache, flux = files
    result = run_fit(fit_config(tmp_path, cache, flux, steps=2, **FP8_RUN))
    fp8 = [m for m in result.model.modules() if isinstance(m, Fp8Linear)]
    assert len(fp8) == 2 * 10 + 2 * 3 and all(m.weight.dtype == FP8 for m in fp8)
    loaded = load_flux(flux, dtype=torch.float32, fp8=True).state_dict()
    after = result.model.state_dict()
    assert all(torch.equal(loaded[k].view(torch.uint8) if loaded[k].dtype == FP8 else loaded[k],
                           after[k].view(torch.uint8) if after[k].dtype == FP8 else after[k]) for k in loaded)
    assert not any(p.requires_grad for p in result.model.parameters())


def test_fp8_with_gradient_checkpointing_trains_the_same_adapter(files, tmp_path):
    root, cache, flux = files
    plain = run_fit(fit_config(tmp_path, cache, flux, name="plain", steps=3, **FP8_RUN))
    ckpt = run_fit(fit_config(tmp_path, cache, flux, name="ckpt", steps=3, gradient_checkpointing=True, **FP8_RUN))
    assert _max_difference(_adapter_tensors(plain.adapter_path), _adapter_tensors(ckpt.adapter_path)) < 1e-6
    assert plain.losses == ckpt.losses


def test_fp8_gradient_accumulation_equals_a_larger_batch(files, tmp_path):
    root, cache, flux = files
    big = run_fit(fit_config(tmp_path, cache, flux, name="b2", steps=3, batch_size=2, **FP8_RUN))
    acc = run_fit(fit_config(tmp_path, cache, flux, name="a2", steps=3, grad_accum=2, **FP8_RUN))
    # same bound as with full-precision weights: only float summation order differs
    assert _max_difference(_adapter_tensors(big.adapter_path), _adapter_tensors(acc.adapter_path)) < 1e-5


def test_fp8_interrupted_and_resumed_run_equals_uninterrupted(files, tmp_path):
    root, cache, flux = files
    kw = dict(steps=5, grad_accum=2, checkpoint_every=2, gradient_checkpointing=True, caption_dropout=0.5,
              photo_conditioning_prob=0.5, **FP8_RUN)
    full = run_fit(fit_config(tmp_path, cache, flux, name="full", **kw))
    resumed = interrupted_and_resumed(tmp_path, cache, flux, stop_at=3, **kw)
    assert resumed.steps == 5 and len(resumed.losses) == 3  # from the step-2 checkpoint
    a, b = _adapter_tensors(full.adapter_path), _adapter_tensors(resumed.adapter_path)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed fp8 run differs from the uninterrupted one"


def test_base_dtype_cannot_change_on_resume(files, tmp_path):
    root, cache, flux = files
    run_fit(fit_config(tmp_path, cache, flux, steps=1, checkpoint_every=1, **FP8_RUN))
    with pytest.raises(ConfigError, match="base_dtype: run has 'fp8', given 'bf16'"):
        run_fit(fit_config(tmp_path, cache, flux, steps=2, resume=True, base_dtype="bf16"))


def test_an_fp8_file_trains_the_same_adapter_stored_as_fp8_or_dequantized(files, tmp_path):
    """--base-dtype bf16 dequantizes an fp8 file to the values Fp8Linear computes with (here in fp32)."""
    root, cache, _ = files
    model = load_flux(tiny_flux_file(tmp_path / "tiny.safetensors"))
    path, _ = comfy_fp8_file(tmp_path / "flux1-dev-fp8.safetensors", model)
    stored = run_fit(fit_config(tmp_path, cache, path, name="fp8", steps=3, base_dtype="fp8"))
    dequantized = run_fit(fit_config(tmp_path, cache, path, name="bf16", steps=3, base_dtype="bf16"))
    assert stored.losses == dequantized.losses
    assert _max_difference(_adapter_tensors(stored.adapter_path), _adapter_tensors(dequantized.adapter_path)) == 0.0


def test_an_unusable_fp8_file_is_refused_in_one_line(files, tmp_path, capsys):
    root, cache, _ = files
    _, state = comfy_fp8_file(tmp_path / "ok.safetensors", load_flux(tiny_flux_file(tmp_path / "tiny.safetensors")))
    state = {k: v.to(torch.float8_e5m2) if v.dtype == FP8 else v for k, v in state.items()}
    save_file(state, str(tmp_path / "flux1-dev-fp8-e5m2.safetensors"))
    args = ["fit", "--cache", str(cache), "--flux", str(tmp_path / "flux1-dev-fp8-e5m2.safetensors"),
            "--output", str(tmp_path / "run"), "--base-dtype", "fp8", "--device", "cpu"]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lumix-train fit: flux1-dev-fp8-e5m2.safetensors: ") and "is float8_e5m2" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()

"""Encoder files are checked from their headers before ComfyUI loads gigabytes (no ComfyUI needed)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lumix_core.io.safetensors_io import CheckpointError
from lumix_core.train.comfy_host import (
    ComfyEncoder,
    HostError,
    check_clip_l_file,
    check_t5_file,
    check_vae_file,
    import_comfy,
)

CLIP_KEY = "text_model.encoder.layers.0.mlp.fc1.weight"
T5_KEY = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"


def _file(path, keys):
    """A safetensors file holding only the named keys (the checks read headers, not weights)."""
    save_file({k: torch.zeros(1) for k in keys}, str(path))
    return path


def test_swapped_and_wrong_text_encoders_are_named(tmp_path):
    clip = _file(tmp_path / "clip_l.safetensors", [CLIP_KEY])
    t5 = _file(tmp_path / "t5.safetensors", [T5_KEY])
    check_clip_l_file(clip)
    check_t5_file(t5)
    with pytest.raises(CheckpointError, match="T5-XXL text encoder; pass it as --t5"):
        check_clip_l_file(t5)
    with pytest.raises(CheckpointError, match="CLIP text encoder; pass it as --clip-l"):
        check_t5_file(clip)
    big = _file(tmp_path / "clip_g.safetensors", [CLIP_KEY, "text_model.encoder.layers.22.mlp.fc1.weight"])
    with pytest.raises(CheckpointError, match="FLUX uses CLIP-L"):
        check_clip_l_file(big)
    other = _file(tmp_path / "other.safetensors", ["foo"])
    with pytest.raises(CheckpointError, match="not a T5-XXL encoder"):
        check_t5_file(other)


def test_vae_checks_and_pickles_are_refused(tmp_path):
    sd_vae = tmp_path / "sdxl_vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(512, 4, 3, 3)}, str(sd_vae))
    with pytest.raises(CheckpointError, match="4 latent channels; the FLUX VAE has 16"):
        check_vae_file(sd_vae)
    flux_vae = tmp_path / "ae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(8, 16, 3, 3)}, str(flux_vae))
    check_vae_file(flux_vae)
    pickle = tmp_path / "ae.ckpt"
    pickle.write_bytes(b"\x80\x04 not really")
    with pytest.raises(CheckpointError, match="pickle"):
        check_vae_file(pickle)


def test_files_are_checked_before_comfyui_is_imported(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    clip = _file(tmp_path / "clip_l.safetensors", [CLIP_KEY])
    t5 = _file(tmp_path / "t5.safetensors", [T5_KEY])
    with pytest.raises(CheckpointError, match="not a VAE"):  # not HostError: no ComfyUI is needed to say so
        ComfyEncoder.from_files(None, str(t5), str(clip), str(t5))
    with pytest.raises(HostError, match="needs the encoder files: --clip-l"):
        ComfyEncoder.from_files(None, str(t5), None, str(t5))


def test_comfyui_checkout_is_required_and_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    with pytest.raises(HostError, match="--comfyui PATH or set COMFYUI_PATH"):
        import_comfy(None)
    with pytest.raises(HostError, match="is not a ComfyUI checkout"):
        import_comfy(str(tmp_path))


def test_the_trainer_does_not_import_comfyui_at_import_time():
    import subprocess
    import sys

    code = ("import sys, lumix_core.train.cli, lumix_core.train.fit, lumix_core.train.prepare, "
            "lumix_core.train.comfy_host, lumix_core.train.validation; "
            "print(sorted(m for m in sys.modules if m == 'comfy' or m.startswith('comfy.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

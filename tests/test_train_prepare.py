"""``prepare`` with a synthetic encoder injected at the Encoder boundary."""
from __future__ import annotations

import json

import pytest
import torch
from train_helpers import MAPS3, TEXT_TOKENS, SyntheticEncoder, write_dataset

from lumix_core.train.cache import MANIFEST, LatentCache
from lumix_core.train.config import PrepareConfig
from lumix_core.train.data import DatasetError
from lumix_core.train.prepare import run_prepare


def _config(tmp_path, data, **kw) -> PrepareConfig:
    return PrepareConfig(data=str(data), cache=str(tmp_path / "cache"), maps=MAPS3.to_string(), cache_dtype="fp32",
                         shard_size=2, **kw)


def test_prepare_writes_a_cache_that_reads_back(tmp_path):
    data = write_dataset(tmp_path / "data", ["a", "b", "c"], width=64, height=48)
    encoder = SyntheticEncoder()
    report = run_prepare(_config(tmp_path, data, size="32"), encoder=encoder, progress=False)
    assert report.prepared == 3 and report.skipped_scenes == 0
    cache = LatentCache(tmp_path / "cache")
    assert cache.maps == MAPS3 and len(cache) == 3
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "empty.safetensors", MANIFEST, "shard-00000.safetensors", "shard-00001.safetensors"]
    scene = cache.scene(2)
    assert scene.record.scene_id == "c" and scene.record.caption == "a room number 2"
    assert scene.latents.shape == (3, 16, 4, 4) and scene.txt.shape == (TEXT_TOKENS, 32) and scene.y.shape == (16,)
    # The cached latents are exactly what the encoder gives for the cropped maps, in map order.
    from lumix_core.train.crop import CropSpec
    from lumix_core.train.data import scan_dataset
    from lumix_core.train.prepare import load_scene_images

    files = {s.scene_id: s for s in scan_dataset(data, MAPS3)[0]}
    images = load_scene_images(files["c"], MAPS3, CropSpec.parse("32"))
    assert torch.equal(scene.latents, encoder.encode_images(torch.from_numpy(images)))
    assert torch.equal(scene.txt, encoder.encode_text(["a room number 2"])[0][0])
    empty_txt, _ = cache.empty_conditioning()
    assert torch.equal(empty_txt, encoder.encode_text([""])[0][0])
    manifest = json.loads((tmp_path / "cache" / MANIFEST).read_text())
    assert manifest["encoder"] == {"host": "synthetic"} and manifest["crop"]["width"] == 32
    assert manifest["skipped"] == []


def test_bad_data_stops_before_the_encoders_load_and_writes_nothing(tmp_path):
    data = write_dataset(tmp_path / "data", ["a", "b", "c"])
    (data / "depth" / "b_depth.png").unlink()
    (data / "captions_blip2" / "c_color.json").write_text(json.dumps({"caption": ""}))
    loaded = []
    with pytest.raises(DatasetError) as err:
        run_prepare(_config(tmp_path, data), encoder_factory=lambda c: loaded.append(1), progress=False)
    text = str(err.value)
    assert "2 problem(s)" in text and "missing the 'depth' map" in text and "empty caption" in text
    assert "--skip-bad" in text
    assert loaded == [] and not (tmp_path / "cache").exists()
    assert not any(p.name.startswith(".cache") for p in tmp_path.iterdir()), "temp folder left behind"


def test_skip_bad_reports_and_records_what_it_skipped(tmp_path):
    data = write_dataset(tmp_path / "data", ["a", "b", "c", "d"])
    (data / "depth" / "b_depth.png").unlink()
    (data / "color" / "d_color.png").write_bytes(b"\x89PNG broken")
    report = run_prepare(_config(tmp_path, data, skip_bad=True), encoder=SyntheticEncoder(), progress=False)
    assert report.prepared == 2 and report.skipped_scenes == 2
    assert "skipped 2 scene(s)" in report.summary() and "d_color.png" in report.summary()
    manifest = json.loads((tmp_path / "cache" / MANIFEST).read_text())
    assert [s["id"] for s in manifest["scenes"]] == ["a", "c"]
    assert sorted(p["id"] for p in manifest["skipped"]) == ["b", "d"]


def test_existing_cache_is_refused_unless_overwrite(tmp_path):
    data = write_dataset(tmp_path / "data", ["a"])
    run_prepare(_config(tmp_path, data), encoder=SyntheticEncoder(), progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_prepare(_config(tmp_path, data), encoder=SyntheticEncoder(), progress=False)
    write_dataset(tmp_path / "data", ["z"])
    run_prepare(_config(tmp_path, data, overwrite=True), encoder=SyntheticEncoder(), progress=False)
    assert [r.scene_id for r in LatentCache(tmp_path / "cache").records] == ["a", "z"]
    other = tmp_path / "notacache"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    cfg = _config(tmp_path, data, overwrite=True)
    cfg.cache = str(other)
    with pytest.raises(FileExistsError, match="not a LumiX training cache"):
        run_prepare(cfg, encoder=SyntheticEncoder(), progress=False)
    assert (other / "keep.txt").is_file()


def test_native_sizes_must_be_multiples_of_16(tmp_path):
    data = write_dataset(tmp_path / "data", ["a"], width=40, height=32)
    with pytest.raises(DatasetError, match="40x32 is not a multiple of 16; pass --size"):
        run_prepare(_config(tmp_path, data), encoder=SyntheticEncoder(), progress=False)


def test_cli_prepare_then_fit_with_a_config_file(tmp_path, monkeypatch, capsys):
    """The command line end to end: prepare (encoder injected) and fit with a YAML config."""
    from train_helpers import tiny_flux_file

    from lumix_core.train import cli, prepare

    data = write_dataset(tmp_path / "data", ["a", "b"])
    monkeypatch.setattr(prepare, "_comfy_encoder", lambda config: SyntheticEncoder())
    assert cli.main(["prepare", "--data", str(data), "--cache", str(tmp_path / "cache"), "--maps",
                     "albedo,color,depth", "--cache-dtype", "fp32"]) == 0
    assert "prepared 2 scene(s)" in capsys.readouterr().out
    flux = tiny_flux_file(tmp_path / "flux.safetensors")
    cfg = tmp_path / "train.yaml"
    cfg.write_text("fit:\n  steps: 5\n  lr: 0.002\n  rank: 2\n  checkpoint-every: 0\n  validate_every: 0\n"
                   "  device: cpu\n  gradient_checkpointing: true\n")
    code = cli.main(["--log-level", "WARNING", "fit", "--config", str(cfg), "--cache", str(tmp_path / "cache"),
                     "--flux", str(flux), "--output", str(tmp_path / "run"), "--steps", "2", "--validation-steps", "2"])
    assert code == 0
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())["config"]
    assert (saved["steps"], saved["lr"], saved["rank"], saved["gradient_checkpointing"]) == (2, 0.002, 2, True)
    # Bad input is a message and exit code 2, not a traceback.
    assert cli.main(["fit", "--cache", str(tmp_path / "cache"), "--flux", str(flux), "--output",
                     str(tmp_path / "run")]) == 2
    assert "already exists" in capsys.readouterr().err

"""``lumix decompose`` with the shipped toy weights: files at the input's size, no overwrite,
one clear line per bad input, and maps that follow the photo they were given."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lumix_core.cli import main
from lumix_core.toy.decompose import decompose_photo, load_photo
from lumix_core.toy.model import ToyLumiX
from lumix_core.toy.scoring.held_out import held_out_scenes, truth_of
from lumix_core.toy.scoring.map_scores import reads_photo
from lumix_core.world.metrics import evaluate_maps

MAPS = ("albedo", "irradiance", "color", "depth", "normal")


@pytest.fixture(scope="module")
def model() -> ToyLumiX:
    return ToyLumiX.load()


def _photo(path: Path, size=(96, 48), mode="RGB") -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def test_decompose_writes_five_maps_at_the_input_size_and_never_overwrites(tmp_path, capsys):
    wide = _photo(tmp_path / "wide.png")
    grey = _photo(tmp_path / "grey.jpg", size=(40, 72), mode="L")
    rgba = _photo(tmp_path / "alpha.png", size=(64, 64), mode="RGBA")
    out = tmp_path / "maps"
    assert main(["decompose", str(wide), str(grey), str(rgba), "--out", str(out), "--steps", "2"]) == 0
    for stem, size in (("wide", (96, 48)), ("grey", (40, 72)), ("alpha", (64, 64))):
        for m in MAPS:
            with Image.open(out / f"{stem}_{m}.png") as img:
                assert img.size == size and img.mode == "RGB", (stem, m)
                assert img.text["lumix.map"] == m and img.text["lumix.source"].startswith(stem)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(["decompose", str(wide), "--out", str(out), "--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "wide_<map>.png exists; wrote wide_1_<map>.png instead" in text
    assert all((out / f"wide_1_{m}.png").is_file() for m in MAPS)
    assert all((out / name).read_bytes() == data for name, data in before.items())  # nothing replaced


def test_bad_inputs_get_one_line_each_and_the_rest_is_still_done(tmp_path, capsys):
    good = _photo(tmp_path / "good.png", size=(32, 32))
    (tmp_path / "notes.png").write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:60])
    folder = tmp_path / "folder"
    folder.mkdir()
    out = tmp_path / "out"
    rc = main(["decompose", str(tmp_path / "missing.png"), str(folder), str(tmp_path / "notes.png"), str(truncated),
               str(good), "--out", str(out), "--steps", "1"])
    captured = capsys.readouterr()
    assert rc == 1
    err = captured.err.splitlines()
    assert len(err) == 4, err
    assert "missing.png: no such file" in err[0]
    assert "folder: is a folder, not an image" in err[1]
    assert "notes.png: is not an image PIL can read" in err[2]
    assert "cut.png: " in err[3]
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"good_{m}.png" for m in MAPS)
    assert "1 decomposed (the multi-step adapter, 1 step, seed 0), 4 failed" in captured.out


def test_usage_errors_write_nothing(tmp_path, capsys):
    photo = _photo(tmp_path / "p.png", size=(16, 16))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as e:  # argparse-level checks exit 2 with one line
        main(["decompose", str(photo), "--out", str(a_file)])
    assert e.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["decompose", str(photo), "--out", str(tmp_path / "o"), "--steps", "0"])
    assert e.value.code == 2
    assert main(["decompose", str(photo), "--out", str(tmp_path / "o"), "--prompt", "a flying teapot"]) == 2
    assert "unknown" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_load_photo_applies_exif_rotation(tmp_path):
    img = Image.new("RGB", (30, 10), (200, 10, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert tuple(load_photo(tmp_path / "rot.jpg").shape) == (30, 10, 3)


@pytest.mark.xfail(strict=True, reason="the shipped multi-step adapter does not read its photo "
                   "(its depth and normals are the prior; the one-step adapter does, see the test below; "
                   "docs/toy_model.md). strict: a model that reads it makes this XPASS and fail, so the marker "
                   "must then be removed")
def test_decomposed_maps_follow_the_photo_they_were_given(model):
    """The shipped model must read its photo: on held-out renders (never trained on) each
    decomposed depth and normal map is closer to its own scene's truth than to the other's."""
    scenes = held_out_scenes(2)
    rows, preds = [], []
    for r in scenes:
        color = torch.from_numpy(r.encode(["color"])["color"])
        pred = decompose_photo(model, color, steps=8)
        rows.append(evaluate_maps(pred, truth_of(r)))
        preds.append(pred)
    reads_photo(rows, preds, scenes)
    assert all(row["reads_photo_depth"] == 1.0 and row["reads_photo_normal"] == 1.0 for row in rows), rows


@pytest.fixture(scope="module")
def fast_weights(tmp_path_factory) -> Path:
    """A model folder whose one-step adapter is the shipped multi-step one re-labelled (for the
    command's mechanics; the shipped one-step adapter is tested on its own below)."""
    import shutil

    from lumix_core.model.checkpoint import META_OBJECTIVE, OBJECTIVE_ONE_STEP, load_adapter, save_adapter
    from lumix_core.toy.model import ADAPTER_FILE, BACKBONE_FILE, ONE_STEP_ADAPTER_FILE, TEXT_FILE, WEIGHTS_DIR

    folder = tmp_path_factory.mktemp("fast_weights")
    for name in (BACKBONE_FILE, TEXT_FILE, ADAPTER_FILE):
        shutil.copyfile(WEIGHTS_DIR / name, folder / name)
    save_adapter(load_adapter(WEIGHTS_DIR / ADAPTER_FILE), folder / ONE_STEP_ADAPTER_FILE,
                 extra_metadata={META_OBJECTIVE: OBJECTIVE_ONE_STEP})
    return folder


def test_fast_decompose_makes_one_model_call_per_photo(fast_weights, tmp_path, monkeypatch, capsys):
    from lumix_core.model.flux import Flux

    calls = []
    forward = Flux.forward
    monkeypatch.setattr(Flux, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    photo = _photo(tmp_path / "p.png", size=(40, 24))
    out = tmp_path / "fast"
    assert main(["decompose", str(photo), "--out", str(out), "--fast", "--weights", str(fast_weights)]) == 0
    assert len(calls) == 1, "one deterministic model call per photo"
    for m in MAPS:
        with Image.open(out / f"p_{m}.png") as img:
            assert img.size == (40, 24) and img.text["lumix.steps"] == "1 (one-step adapter)"
    # Deterministic: no noise, so a second run gives the same bytes.
    assert main(["decompose", str(photo), "--out", str(out), "--fast", "--weights", str(fast_weights)]) == 0
    assert all((out / f"p_{m}.png").read_bytes() == (out / f"p_1_{m}.png").read_bytes() for m in MAPS)


def test_decompose_uses_the_one_step_adapter_unless_asked_to_sample(fast_weights, tmp_path, monkeypatch, capsys):
    """No flags: the folder's one-step adapter (one call). --steps or --seed: the multi-step
    sampler. A folder without a one-step adapter: sampled, and the command says so."""
    import shutil

    from lumix_core.model.flux import Flux
    from lumix_core.toy.model import ADAPTER_FILE, BACKBONE_FILE, TEXT_FILE

    calls = []
    forward = Flux.forward
    monkeypatch.setattr(Flux, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    photo = _photo(tmp_path / "p.png", size=(16, 16))
    assert main(["decompose", str(photo), "--out", str(tmp_path / "a"), "--weights", str(fast_weights)]) == 0
    assert len(calls) == 1 and "1 decomposed (the one-step adapter)" in capsys.readouterr().out
    calls.clear()
    assert main(["decompose", str(photo), "--out", str(tmp_path / "b"), "--weights", str(fast_weights),
                 "--seed", "3"]) == 0
    assert len(calls) > 1 and "the multi-step adapter, 24 steps, seed 3" in capsys.readouterr().out
    with Image.open(tmp_path / "b" / "p_depth.png") as img:
        assert img.text["lumix.steps"] == "24" and img.text["lumix.seed"] == "3"
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in (BACKBONE_FILE, TEXT_FILE, ADAPTER_FILE):
        shutil.copyfile(fast_weights / name, bare / name)
    calls.clear()
    assert main(["decompose", str(photo), "--out", str(tmp_path / "c"), "--weights", str(bare), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "has no adapter_one_step.safetensors; sampling with its multi-step adapter in 24 steps" in text
    assert len(calls) > 1 and all((tmp_path / "c" / f"p_{m}.png").is_file() for m in MAPS)


def test_fast_decompose_refuses_steps_and_seed_and_a_folder_without_a_one_step_adapter(tmp_path, capsys):
    photo = _photo(tmp_path / "p.png", size=(16, 16))
    assert main(["decompose", str(photo), "--out", str(tmp_path / "o"), "--fast", "--steps", "8"]) == 2
    assert "--fast decomposes in one deterministic step" in capsys.readouterr().err
    import shutil

    from lumix_core.toy.model import ADAPTER_FILE, BACKBONE_FILE, TEXT_FILE, WEIGHTS_DIR

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in (BACKBONE_FILE, TEXT_FILE, ADAPTER_FILE):
        shutil.copyfile(WEIGHTS_DIR / name, bare / name)
    assert main(["decompose", str(photo), "--out", str(tmp_path / "o"), "--fast", "--weights", str(bare)]) == 2
    assert "no adapter_one_step.safetensors, so --fast has no one-step adapter" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_one_step_toy_refuses_to_generate_from_text(fast_weights):
    from lumix_core.toy.model import ONE_STEP_ADAPTER_FILE

    fast = ToyLumiX.load(fast_weights, adapter=fast_weights / ONE_STEP_ADAPTER_FILE)
    assert fast.one_step
    with pytest.raises(ValueError, match="one-step decomposition adapter: it decomposes photos"):
        fast.generate(["a red sphere"])


def test_fast_decomposition_reads_the_photo_it_was_given():
    """The shipped one-step adapter reads its photo: on 8 held-out renders (one call each, so
    cheap), at least 90 % of the depth and of the normal maps are closer to their own scene's
    truth than to the next scene's -- the "reads the photo" target (64-scene figures: docs/toy_model.md)."""
    from lumix_core.toy.decompose import load_model

    fast = load_model(fast=True)
    assert fast.one_step
    scenes = held_out_scenes(8)
    rows, preds = [], []
    for r in scenes:
        pred = decompose_photo(fast, torch.from_numpy(r.encode(["color"])["color"]))
        rows.append(evaluate_maps(pred, truth_of(r)))
        preds.append(pred)
    reads_photo(rows, preds, scenes)
    for key in ("reads_photo_depth", "reads_photo_normal"):
        assert np.mean([row[key] for row in rows]) >= 0.9, (key, rows)

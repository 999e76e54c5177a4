"""``lumix decompose --sequence``: frames as one shot, per-frame PNGs plus the EXR sequence, bad
frames one line each, nothing overwritten, usage errors before anything is written."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from lumix_core.cli import main
from lumix_core.world.scene import sample_scene
from lumix_core.world.shots import render_shot

OpenEXR = pytest.importorskip("OpenEXR", reason="the EXR sequence needs the 'openexr' package")
pytest.importorskip("cv2")

MAPS = ("albedo", "irradiance", "color", "depth", "normal")


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    shot = render_shot(sample_scene(11), "pan", frames=4, size=32).encoded()["color"]
    paths = []
    for i, f in enumerate(shot):
        path = folder / f"plate_{i:02d}.png"
        Image.fromarray((f * 255 + 0.5).astype(np.uint8)).resize((48, 40)).save(path)
        paths.append(str(path))
    return paths


def test_a_sequence_writes_every_frames_maps_and_one_exr_per_frame_and_never_overwrites(frames, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["decompose", "--sequence", *frames, "--out", str(out), "--name", "pan", "--start-frame", "1001",
                 "--chunk", "3"]) == 0
    for i in range(4):
        for m in MAPS:
            with Image.open(out / f"plate_{i:02d}_{m}.png") as img:
                assert img.size == (48, 40) and img.text["lumix.shot"] == "pan"
                assert img.text["lumix.frame"] == str(1001 + i)
    assert sorted(p.name for p in (out / "pan").iterdir()) == [f"pan.{1001 + i}.exr" for i in range(4)]
    header = OpenEXR.File(str(out / "pan" / "pan.1004.exr")).header()
    assert header["lumix.frame_range"] == "1001-1004" and header["lumix.camera"] == "moving"
    assert "sequence -> " in capsys.readouterr().out
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["decompose", "--sequence", *frames, "--out", str(out), "--name", "pan"]) == 0
    text = capsys.readouterr().out
    assert "pan_v002/ instead" in text and "plate_00_1_<map>.png" in text
    assert (out / "pan_v002" / "pan_v002.0001.exr").is_file()
    assert all(p.read_bytes() == data for p, data in before.items())


def test_bad_frames_get_one_line_each_and_the_rest_is_the_shot(frames, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # no tqdm: progress as plain lines
    (tmp_path / "notes.png").write_text("not an image")
    odd = tmp_path / "odd.png"
    Image.new("RGB", (20, 20)).save(odd)
    out = tmp_path / "out"
    code = main(["decompose", "--sequence", frames[0], str(tmp_path / "notes.png"), str(odd), frames[1],
                 str(tmp_path / "missing.png"), "--out", str(out), "--camera", "locked-off"])
    captured = capsys.readouterr()
    assert code == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("lumix decompose:")]
    assert len(errors) == 3
    assert any("odd.png: is 20 x 20 pixels; the shot's frames are 48 x 40" in e for e in errors)
    assert "decomposed 2/2 frames" in captured.err
    assert sorted(p.name for p in (out / "plate_00").iterdir()) == ["plate_00.0001.exr", "plate_00.0002.exr"]
    # locked-off: one albedo for the whole shot
    a0 = np.asarray(Image.open(out / "plate_00_albedo.png"))
    a1 = np.asarray(Image.open(out / "plate_01_albedo.png"))
    assert np.array_equal(a0, a1)


@pytest.mark.parametrize("args, message", [
    (["IMG", "--sequence", "IMG"], "not both"),
    ([], "give the image files"),
    (["IMG", "--name", "shot"], "--name only apply with --sequence"),
    (["IMG", "--camera", "locked-off"], "--camera only apply with --sequence"),
])
def test_usage_errors_write_nothing(frames, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    argv = ["decompose", *[frames[0] if a == "IMG" else a for a in args], "--out", str(out)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_moving_camera_without_opencv_is_refused_before_the_model_runs(frames, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    out = tmp_path / "out"
    assert main(["decompose", "--sequence", *frames, "--out", str(out)]) == 2
    assert "pip install opencv-python" in capsys.readouterr().err
    assert not out.exists()
    assert main(["decompose", "--sequence", *frames[:2], "--out", str(out), "--camera", "none"]) == 0

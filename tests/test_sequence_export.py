"""Sequence export: compositor names, start frame and padding, versioned never-overwriting folders,
the shot's metadata in every file, a sequence written whole or not at all."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from lumix_core.conventions import srgb_to_linear
from lumix_core.io import export
from lumix_core.io.sequence import frame_token, save_sequence
from lumix_core.maps import RELEASE_MAPS

OpenEXR = pytest.importorskip("OpenEXR", reason="EXR tests need the 'openexr' package")

H, W = 4, 5


def shot_maps(frames=3):
    g = torch.Generator().manual_seed(2)
    maps = {name: torch.rand(frames, H, W, 3, generator=g) for name in RELEASE_MAPS}
    maps["depth"] = torch.rand(frames, H, W, 1, generator=g).repeat(1, 1, 1, 3)
    return maps


def listing(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_frame_numbers_are_padded_to_four_digits_or_more():
    assert frame_token(7, 24) == "0007" and frame_token(1001, 1024) == "1001"
    assert frame_token(9999, 10000) == "09999" and frame_token(10000, 10000) == "10000"


def test_a_sequence_is_named_as_compositors_read_it_with_the_shot_in_every_header(tmp_path):
    maps = shot_maps()
    seq = save_sequence(maps, tmp_path, "shots/kitchen", start_frame=1001, formats=["exr", "exr-per-map", "png16"],
                        prompt="a kitchen", seed=42, extra={"lumix.camera": "locked-off"})
    assert seq.note is None and seq.name == "kitchen" and seq.subfolder == "shots/kitchen"
    names = [f.filename for f in seq.files]
    assert names[0] == "kitchen.1001.exr" and "kitchen_albedo.1001.exr" in names and "kitchen_normal.1003.png" in names
    assert len(names) == 3 * (1 + 2 * len(RELEASE_MAPS))
    assert [f.scene for f in seq.files if f.format == "exr"] == [1001, 1002, 1003]
    exr = OpenEXR.File(str(tmp_path / "shots/kitchen/kitchen.1002.exr"), separate_channels=True)
    header = exr.header()
    assert header["lumix.frame"] == "1002" and header["lumix.frame_range"] == "1001-1003"
    assert header["lumix.shot"] == "kitchen" and header["lumix.prompt"] == "a kitchen" and header["lumix.seed"] == "42"
    assert header["lumix.camera"] == "locked-off"
    assert json.loads(header["lumix.conventions"])["depth_polarity"] == "near = bright"
    channels = {k: v.pixels for k, v in exr.channels().items()}
    assert np.array_equal(channels["albedo.G"], srgb_to_linear(maps["albedo"][1]).numpy()[..., 1])
    assert np.array_equal(channels["depth.Z"], maps["depth"][1].mean(-1).numpy())
    per_map = OpenEXR.File(str(tmp_path / "shots/kitchen/kitchen_normal.1003.exr"), separate_channels=True)
    assert set(per_map.channels()) == {"normal.X", "normal.Y", "normal.Z"}
    assert per_map.header()["lumix.map"] == "normal"
    png = cv2.imread(str(tmp_path / "shots/kitchen/kitchen_depth.1001.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16 and png.shape == (H, W)
    assert np.array_equal(png, np.round(maps["depth"][0, ..., 0].numpy() * 65535).astype(np.uint16))


def test_an_existing_sequence_is_never_overwritten_the_next_is_versioned_and_says_so(tmp_path):
    first = save_sequence(shot_maps(2), tmp_path, "plate")
    before = {p: (tmp_path / p).read_bytes() for p in listing(tmp_path)}
    second = save_sequence(shot_maps(2), tmp_path, "plate")
    third = save_sequence(shot_maps(2), tmp_path, "plate")
    assert [f.filename for f in first.files] == ["plate.0001.exr", "plate.0002.exr"]
    assert second.name == "plate_v002" and [f.filename for f in second.files][0] == "plate_v002.0001.exr"
    assert "plate exists" in second.note and "plate_v002/" in second.note and "nothing was overwritten" in second.note
    assert third.name == "plate_v003"
    assert all((tmp_path / p).read_bytes() == data for p, data in before.items())


def test_a_failure_part_way_removes_the_sequence_and_its_folder(tmp_path, monkeypatch):
    calls = []
    real = export.write_exr

    def failing(path, layers, header):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, layers, header)

    monkeypatch.setattr(export, "write_exr", failing)  # the EXR writer both exports share
    with pytest.raises(export.SaveError, match="No space left"):
        save_sequence(shot_maps(3), tmp_path, "plate")
    assert listing(tmp_path) == [] and not (tmp_path / "plate").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"start_frame": -1}, "start frame must be a whole number >= 0"),
    ({"start_frame": 1.5}, "start frame"),
    ({"formats": ["mov"]}, "unknown or no sequence format"),
    ({"formats": []}, "unknown or no sequence format"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        save_sequence(shot_maps(2), tmp_path, "plate", **kwargs)
    assert listing(tmp_path) == [] and not (tmp_path / "plate").exists()


def test_a_prefix_outside_the_output_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="outside the output folder"):
        save_sequence(shot_maps(1), tmp_path / "out", "../plate")

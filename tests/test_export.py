"""Export: PNG encoder, 16-bit PNG and multi-layer EXR round trips, metadata, save safety."""
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lumix_core.conventions import srgb_to_linear
from lumix_core.io.export import next_counter, resolve_prefix, save_maps
from lumix_core.io.png import encode_png
from lumix_core.maps import RELEASE_MAPS

OpenEXR = pytest.importorskip("OpenEXR", reason="EXR tests need the 'openexr' package")

H, W = 6, 9


def read_png(path):
    """Pixels as written (RGB order), via OpenCV (an independent decoder)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, f"OpenCV could not read {path}"
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return img


def png_text(path):
    with Image.open(path) as im:
        im.load()
        return dict(im.text)


def scene_maps(n=2):
    g = torch.Generator().manual_seed(1)
    maps = {name: torch.rand(n, H, W, 3, generator=g) for name in RELEASE_MAPS}
    depth = torch.rand(n, H, W, 1, generator=g)
    maps["depth"] = depth.repeat(1, 1, 1, 3)
    normal = torch.randn(n, H, W, 3, generator=g)
    maps["normal"] = (normal / normal.norm(dim=-1, keepdim=True) + 1) / 2
    return maps


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_encoder_round_trips_through_opencv_and_keeps_text(tmp_path, dtype, channels):
    rng = np.random.default_rng(0)
    top = np.iinfo(dtype).max
    shape = (7, 11) if channels == 1 else (7, 11, channels)
    pixels = rng.integers(0, top + 1, size=shape, dtype=np.int64).astype(dtype)
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(pixels, {"lumix.prompt": "a röom with a ☀", "plain": "latin"}))
    assert np.array_equal(read_png(path), pixels)
    assert png_text(path) == {"lumix.prompt": "a röom with a ☀", "plain": "latin"}


def test_png_encoder_refuses_bad_input():
    with pytest.raises(ValueError, match="uint8 or uint16"):
        encode_png(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="keyword"):
        encode_png(np.zeros((2, 2), np.uint8), {"": "x"})


def test_save_writes_documented_files_and_png_round_trips(tmp_path):
    maps = scene_maps()
    saved = save_maps(maps, tmp_path, "run/lumix", prompt="a kitchen, ü", seed=1234567890123, formats=["png8", "png16"])
    names = sorted(f.filename for f in saved)
    expected = sorted(
        [f"lumix_00001_{s:02d}_{m}.png" for s in range(2) for m in RELEASE_MAPS]
        + [f"lumix_00001_{s:02d}_{m}_16bit.png" for s in range(2) for m in ("depth", "normal")]
    )
    assert names == expected
    assert all(f.subfolder == "run" and os.path.dirname(f.path) == str(tmp_path / "run") for f in saved)

    for s in range(2):
        stem = tmp_path / "run" / f"lumix_00001_{s:02d}"
        # 16-bit: within half a quantisation step of 1/65535
        depth16 = read_png(f"{stem}_depth_16bit.png")
        assert depth16.dtype == np.uint16 and depth16.shape == (H, W)
        assert np.abs(depth16 / 65535.0 - maps["depth"][s, ..., 0].numpy()).max() <= 0.5 / 65535 + 1e-7
        normal16 = read_png(f"{stem}_normal_16bit.png")
        assert normal16.dtype == np.uint16 and normal16.shape == (H, W, 3)
        assert np.abs(normal16 / 65535.0 - maps["normal"][s].numpy()).max() <= 0.5 / 65535 + 1e-7
        # 8-bit: within half a step of 1/255, channel order RGB
        albedo8 = read_png(f"{stem}_albedo.png")
        assert albedo8.dtype == np.uint8
        assert np.abs(albedo8 / 255.0 - maps["albedo"][s].numpy()).max() <= 0.5 / 255 + 1e-6
        assert read_png(f"{stem}_depth.png").shape == (H, W)
        # text chunks in 8-bit and 16-bit files
        for path in (f"{stem}_albedo.png", f"{stem}_normal_16bit.png", f"{stem}_depth_16bit.png"):
            text = png_text(path)
            assert text["lumix.prompt"] == "a kitchen, ü"
            assert text["lumix.seed"] == "1234567890123"
            assert text["lumix.scene"] == str(s)
            assert json.loads(text["lumix.conventions"])["normal_convention"] == "opengl"
        assert png_text(f"{stem}_normal_16bit.png")["lumix.map"] == "normal"


def test_exr_round_trip_layers_and_header(tmp_path):
    maps = scene_maps()
    saved = save_maps(maps, tmp_path, "lumix", prompt="prompt", seed=7, formats=["exr"])
    assert [f.filename for f in saved] == ["lumix_00001_00.exr", "lumix_00001_01.exr"]
    for s, f in enumerate(saved):
        exr = OpenEXR.File(f.path, separate_channels=True)
        channels = {k: v.pixels for k, v in exr.channels().items()}
        assert set(channels) == {
            "albedo.R", "albedo.G", "albedo.B",
            "irradiance.R", "irradiance.G", "irradiance.B",
            "color.R", "color.G", "color.B",
            "normal.X", "normal.Y", "normal.Z",
            "depth.Z",
        }
        assert all(v.dtype == np.float32 and v.shape == (H, W) for v in channels.values())
        # exact float32 round trip of the documented encodings
        for name in ("albedo", "irradiance", "color"):
            linear = srgb_to_linear(maps[name][s]).numpy()
            for i, c in enumerate("RGB"):
                assert np.array_equal(channels[f"{name}.{c}"], linear[..., i])
        vectors = (maps["normal"][s] * 2 - 1).numpy()
        for i, c in enumerate("XYZ"):
            assert np.array_equal(channels[f"normal.{c}"], vectors[..., i])
        assert np.array_equal(channels["depth.Z"], maps["depth"][s].mean(-1).numpy())
        header = exr.header()
        assert header["lumix.prompt"] == "prompt" and header["lumix.seed"] == "7"
        assert header["lumix.scene"] == str(s)
        assert json.loads(header["lumix.conventions"])["depth_polarity"] == "near = bright"
        assert "linear" in json.loads(header["lumix.exr_encoding"])["albedo"]


def test_saving_twice_never_overwrites(tmp_path):
    maps = {"albedo": torch.rand(1, H, W, 3), "depth": torch.rand(1, H, W, 3)}
    first = save_maps(maps, tmp_path, "x", formats=["png8", "png16"])
    before = {f.path: open(f.path, "rb").read() for f in first}
    second = save_maps({k: 1 - v for k, v in maps.items()}, tmp_path, "x", formats=["png8", "png16"])
    assert {f.filename for f in second} == {"x_00002_00_albedo.png", "x_00002_00_depth.png",
                                            "x_00002_00_depth_16bit.png"}
    assert all(open(p, "rb").read() == data for p, data in before.items())
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert next_counter(str(tmp_path), "x") == 3


@pytest.mark.parametrize("prefix", ["../x", "a/../../x", "/tmp/x", "..", "sub/"])
def test_prefix_escaping_the_output_folder_is_refused(tmp_path, prefix):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match="output folder|absolute|no file name") as info:
        save_maps({"color": torch.rand(1, 2, 2, 3)}, out, prefix, formats=["png8"])
    assert repr(prefix) in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(out) == []


def test_relative_subfolder_prefix_is_allowed(tmp_path):
    folder, subfolder, base = resolve_prefix(tmp_path, "a/./b/../c/maps")
    assert folder == os.path.realpath(tmp_path / "a" / "c") and subfolder == "a/c" and base == "maps"
    assert resolve_prefix(tmp_path, "maps")[1] == ""


def test_missing_openexr_raises_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "OpenEXR", None)  # makes `import OpenEXR` fail
    with pytest.raises(RuntimeError, match="pip install openexr"):
        save_maps({"color": torch.rand(1, 2, 2, 3)}, tmp_path, "x", formats=["png8", "exr"])
    assert os.listdir(tmp_path) == []


def test_bad_save_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown export format"):
        save_maps({"color": torch.rand(1, 2, 2, 3)}, tmp_path, "x", formats=["tiff"])
    with pytest.raises(ValueError, match="same batch size and resolution"):
        save_maps({"color": torch.rand(1, 2, 2, 3), "depth": torch.rand(1, 3, 2, 3)}, tmp_path, "x")
    with pytest.raises(ValueError, match="no maps"):
        save_maps({}, tmp_path, "x")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- all or nothing, metadata never fatal
def tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, dirs, files in os.walk(root) for f in files + dirs)


@pytest.mark.parametrize("prefix, message", [
    ("maps\x00x", r"filename_prefix 'maps\\x00x' contains a NUL character.*remove it"),
    ("sub/" + "m" * 240, r"filename_prefix is too long: the name 'm{40}'... would be \d+ bytes, file systems store at "
                         r"most 255; shorten the prefix by \d+ bytes or more. Nothing was written."),
    ("é" * 130 + "/maps", r"filename_prefix is too long: the name 'é{40}'... would be 260 bytes"),  # a folder, in bytes
    ("maps\ud800", r"filename_prefix contains '\\ud800', which the file system cannot store"),
])
def test_a_prefix_the_file_system_cannot_store_is_refused_before_anything_is_written(tmp_path, prefix, message):
    with pytest.raises(ValueError, match=message):
        save_maps(scene_maps(), tmp_path, prefix, formats=["png8", "png16", "exr"])
    assert tree(tmp_path) == []  # not even the sub-folder


def test_the_longest_storable_names_are_written(tmp_path):
    prefix = "m" * (255 - len("_00001_00_normal_16bit.png"))
    saved = save_maps(scene_maps(1), tmp_path, prefix, formats=["png8", "png16"])
    assert max(len(f.filename) for f in saved) == 255 and len(saved) == 7


def test_a_failure_in_the_middle_of_a_set_removes_what_was_written(tmp_path, monkeypatch):
    import lumix_core.io.export as export

    real, calls = export.write_bytes_atomically, []

    def disk_full_on_the_fourth(path, data, **kw):
        calls.append(path)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(export, "write_bytes_atomically", disk_full_on_the_fourth)
    with pytest.raises(OSError, match=r"saving run_00001_00_depth.png failed \(No space left on device\); the 3 "
                                      r"file\(s\) already written for this set were removed, nothing was saved"):
        save_maps(scene_maps(), tmp_path, "new/run", formats=["png8", "png16"])
    assert len(calls) == 4 and tree(tmp_path) == []  # the folder it made is gone too
    existing = tmp_path / "kept"
    existing.mkdir()
    (existing / "mine.txt").write_text("user data")
    calls.clear()
    with pytest.raises(OSError):
        save_maps(scene_maps(), tmp_path, "kept/run", formats=["png8"])
    assert tree(tmp_path) == ["kept", "kept/mine.txt"]


def test_a_save_racing_another_into_the_same_prefix_takes_the_next_counter(tmp_path, monkeypatch):
    """Another save publishes a file of this set's counter while it is written: this set backs off, removes what
    it wrote, and is written whole under the next counter; the other save's file is untouched."""
    import lumix_core.io.export as export

    real, calls = export.write_bytes_atomically, []

    def other_save_takes_the_third_name(path, data, **kw):
        calls.append(path)
        if len(calls) == 3:
            real(path, b"the other save's file")
        return real(path, data, **kw)

    monkeypatch.setattr(export, "write_bytes_atomically", other_save_takes_the_third_name)
    saved = save_maps(scene_maps(), tmp_path, "run", formats=["png8"])
    assert {f.filename.split("_")[1] for f in saved} == {"00002"} and len(saved) == 2 * len(RELEASE_MAPS)
    taken = Path(calls[2])
    assert tree(tmp_path) == sorted([taken.name] + [f.filename for f in saved])
    assert taken.read_bytes() == b"the other save's file"


def test_a_name_clash_that_does_not_clear_says_so_and_keeps_nothing(tmp_path, monkeypatch):
    import lumix_core.io.export as export

    real = export.write_bytes_atomically

    def always_taken(path, data, **kw):
        real(path, b"another save")
        return real(path, data, **kw)

    monkeypatch.setattr(export, "write_bytes_atomically", always_taken)
    monkeypatch.setattr(export.time, "sleep", lambda s: None)
    with pytest.raises(OSError) as info:
        save_maps(scene_maps(), tmp_path, "run", formats=["png8"])
    text = str(info.value)
    assert text.startswith(f"another save took the name run_{export.NAME_ATTEMPTS:05d}_00_albedo.png while this set "
                           "was being written (several saves into the same filename_prefix at once, 5 tries)"), text
    assert "nothing was saved. Run again, or give each save its own filename_prefix." in text
    assert "disk space" not in text
    assert all(p.read_bytes() == b"another save" for p in tmp_path.iterdir())  # only the other saves' files


@pytest.mark.parametrize("name", ["color", "normal"])
def test_maps_with_nan_or_inf_are_refused_and_nothing_is_written(tmp_path, name):
    maps = scene_maps()
    maps[name][1, 2, 3, 0] = float("nan")
    maps[name][1, 0, 0, 1] = float("inf")
    with pytest.raises(ValueError, match=rf"the {name} map holds 2 NaN/inf value\(s\) of \d+ \(first in scene 1\); "
                                         r"it comes from a failed decode or sampling.*Nothing was saved"):
        save_maps(maps, tmp_path, "x")
    assert tree(tmp_path) == []


def test_metadata_that_png_cannot_hold_is_escaped_and_the_maps_are_saved(tmp_path):
    prompt = "a lamp \ud83d, glowing"  # a lone surrogate, as pasted from a broken clipboard
    extra = {"workflow 🎨": json.dumps({"nodes": []}), "  two  spaces ": "x", "prompt": "{}"}
    saved = save_maps(scene_maps(1), tmp_path, "x", prompt=prompt, formats=["png8", "exr"], extra_text=extra)
    assert len(saved) == 6
    text = png_text(saved[0].path)
    assert text["lumix.prompt"] == "a lamp \\ud83d, glowing"
    assert text["workflow _"] == '{"nodes": []}' and text["two spaces"] == "x" and text["prompt"] == "{}"
    header = OpenEXR.File(saved[-1].path).header()
    assert header["lumix.prompt"] == "a lamp \\ud83d, glowing"


def test_the_report_is_saved_beside_the_maps_as_part_of_the_set(tmp_path):
    report = json.dumps({"scenes": [{"recompose_error": 0.1}]})
    saved = save_maps(scene_maps(), tmp_path, "r/x", formats=["png8"], report=report)
    assert saved[-1].filename == "x_00001_report.json" and saved[-1].scene is None
    assert json.loads((tmp_path / "r" / "x_00001_report.json").read_text()) == json.loads(report)
    assert next_counter(str(tmp_path / "r"), "x") == 2
    with pytest.raises(ValueError, match=r"report_json is not JSON .*connect the report_json output of LumiX "
                                         r"Consistency Report.*Nothing was saved"):
        save_maps(scene_maps(), tmp_path, "r/y", formats=["png8"], report="not json")
    assert not [f for f in os.listdir(tmp_path / "r") if f.startswith("y")]


def test_a_file_where_the_prefix_needs_a_folder_is_not_called_a_name_clash(tmp_path):
    (tmp_path / "sub").write_text("user data")
    with pytest.raises(OSError) as info:
        save_maps(scene_maps(), tmp_path, "sub/run", formats=["png8"])
    assert "another save" not in str(info.value), info.value
    assert (tmp_path / "sub").read_text() == "user data"

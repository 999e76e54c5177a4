"""A file that is not safetensors is named by what it is (magic bytes), with the fix."""
from __future__ import annotations

import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from lumix_core.io.safetensors_io import CheckpointError, foreign_format, read_header
from lumix_core.model.flux_io import load_flux

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64)
GGUF = b"GGUF\x03\x00\x00\x00" + bytes(64)


def _zip_bytes(tmp_path) -> bytes:
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"x")
    return path.read_bytes()


@pytest.mark.parametrize("kind, what, fix", [
    ("png", "this file is a PNG image, not a safetensors weights file", "pass the .safetensors weights file"),
    ("jpeg", "this file is a JPEG image, not a safetensors weights file", "check the path"),
    ("gguf", "this file is a GGUF file", "pass the .safetensors weights file"),
    ("zip", "this file is a pickle (a zip archive, the format torch.save writes", "safetensors.torch.save_file"),
    ("pickle", "this file is a pickle (Python pickle data)", "execute arbitrary code"),
])
def test_common_foreign_files_are_named(tmp_path, kind, what, fix):
    data = {"png": PNG, "jpeg": JPEG, "gguf": GGUF, "zip": _zip_bytes(tmp_path),
            "pickle": pickle.dumps({"a": 1}, protocol=4)}[kind]
    path = tmp_path / "flux1-dev.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as exc:
        read_header(path)
    message = str(exc.value)
    assert message.startswith("flux1-dev.safetensors: ") and what in message and fix in message, message
    assert "header length" not in message and "download" not in message
    assert path.read_bytes() == data  # only read


def test_real_images_and_torch_save_are_recognised(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    torch.save({"w": torch.zeros(2)}, tmp_path / "a.pt")
    assert foreign_format((tmp_path / "a.png").read_bytes()[:8]).what == "a PNG image"
    assert foreign_format((tmp_path / "a.jpg").read_bytes()[:8]).what == "a JPEG image"
    assert foreign_format((tmp_path / "a.pt").read_bytes()[:8]).pickled
    save_file({"w": torch.zeros(2)}, str(tmp_path / "ok.safetensors"))
    assert foreign_format((tmp_path / "ok.safetensors").read_bytes()[:8]) is None
    assert read_header(tmp_path / "ok.safetensors").tensors["w"].shape == (2,)


def test_unknown_bytes_and_truncation_say_what_to_do(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello, this is text and no weights at all")
    with pytest.raises(CheckpointError) as exc:
        read_header(junk)
    message = str(exc.value)
    assert "not a safetensors file (it starts with bytes 68 65 6c 6c 6f 2c 20 74" in message
    assert "check the path, or download it again" in message and len(message) < 250
    save_file({"w": torch.zeros(64)}, str(tmp_path / "ok.safetensors"))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tmp_path / "ok.safetensors").read_bytes()[:30])
    with pytest.raises(CheckpointError, match=r"cut.safetensors: the file is truncated or corrupt: its header needs "
                                              r"\d+ bytes, the file has 30; download it again$"):
        read_header(cut)
    with pytest.raises(CheckpointError) as exc:
        read_header(cut)
    assert exc.value.problem.endswith("the file has 30") and exc.value.remedy == "download it again"


def test_the_flux_loader_uses_it(tmp_path):
    path = tmp_path / "photo.safetensors"
    path.write_bytes(PNG)
    with pytest.raises(CheckpointError, match="photo.safetensors: this file is a PNG image"):
        load_flux(path)

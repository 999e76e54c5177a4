"""``lumix demo`` refuses bad values with one line that names the flag and the fix, exits 2,
and writes nothing; a folder that fails while writing gets the same treatment."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest
import torch

import lumix_core.io.export
import lumix_core.toy.demo
from lumix_core import cli_args
from lumix_core.cli import main
from lumix_core.cli_args import SEED_MAX, guidance_scale, seed_value, thread_count
from lumix_core.toy.demo import FILE_PREFIX


def refused(argv: list[str], capsys) -> str:
    """Run ``lumix`` with ``argv``; it must exit 2 with exactly one line on stderr and no stdout."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def failed(argv: list[str], capsys) -> str:
    """Like :func:`refused`, for errors met after parsing (``main`` returns 2)."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("flag, value, words", [
    ("--seed", "99999999999999999999", ["--seed", f"0 to {SEED_MAX}", "99999999999999999999"]),
    ("--seed", "-1", ["--seed", "whole number from 0"]),
    ("--cfg", "nan", ["--cfg", "finite number of at least 1", "'nan'"]),
    ("--cfg", "-3", ["--cfg", "at least 1 (1 = no guidance"]),
    ("--cfg", "inf", ["--cfg", "finite"]),
    ("--threads", "0", ["--threads", "at least 1", "cores"]),
    ("--threads", "-2", ["--threads", "at least 1"]),
    ("--steps", "0", ["--steps", "at least 1"]),
])
def test_bad_numbers_are_refused_before_anything_runs(tmp_path, capsys, flag, value, words):
    out = tmp_path / "out"
    err = refused(["demo", "--out", str(out), flag, value], capsys)
    assert err.startswith("lumix demo: argument " + flag)
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()


def test_edge_values_that_are_valid_stay_accepted():
    assert seed_value("0") == 0 and seed_value(str(SEED_MAX)) == SEED_MAX
    torch.Generator().manual_seed(SEED_MAX)  # the largest accepted seed is one torch takes
    assert guidance_scale("1") == 1.0 and guidance_scale("7.5") == 7.5
    assert thread_count("1") == 1


def test_empty_out_is_refused_instead_of_writing_into_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = refused(["demo", "--out", ""], capsys)
    assert "argument --out: the output folder is empty; name a folder" in err
    assert list(tmp_path.iterdir()) == []


def test_out_under_a_file_or_onto_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("keep")
    err = refused(["demo", "--out", str(f / "maps")], capsys)
    assert f"'{f}' is a file, not a folder" in err and "cannot be made" in err
    err = refused(["demo", "--out", str(f)], capsys)
    assert "is a file, not a folder; choose a folder" in err
    assert f.read_text() == "keep" and sorted(tmp_path.iterdir()) == [f]


def test_immutable_folder_is_refused(tmp_path, capsys):
    """A real immutable folder (``chattr +i``; root cannot write into it either). Skipped where
    the file system or the missing capability does not allow setting the flag."""
    folder = tmp_path / "frozen"
    folder.mkdir()
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot set the immutable flag here")
    try:
        err = refused(["demo", "--out", str(folder / "maps")], capsys)
        assert f"cannot write into '{folder}'" in err and "immutable" in err and "choose a folder" in err
        assert list(folder.iterdir()) == []
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_read_only_file_system_is_named(tmp_path, capsys, monkeypatch):
    """Simulated (no read-only mount is available to the tests): ``access`` says no and the
    file system reports ST_RDONLY, as the kernel does on an EROFS mount."""
    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(cli_args.os, "access", lambda path, mode: False)
    monkeypatch.setattr(cli_args.os, "statvfs", lambda path: ReadOnly())
    err = refused(["demo", "--out", str(tmp_path / "maps")], capsys)
    assert "on a read-only file system); choose a folder you can write to" in err
    assert not (tmp_path / "maps").exists()


def _raise_on_write(code: int):
    def write(path, data, **kw):
        raise OSError(code, os.strerror(code), str(path))
    return write


def test_write_failure_after_the_checks_is_one_line_and_leaves_no_maps(tmp_path, capsys, monkeypatch):
    """The folder passed the checks but the disk refuses the first map (remounted read-only)."""
    monkeypatch.setattr(lumix_core.io.export, "write_bytes_atomically", _raise_on_write(errno.EROFS))
    err = failed(["demo", "--out", str(tmp_path), "--steps", "2"], capsys)
    assert f"lumix demo: cannot write into '{tmp_path}': Read-only file system" in err
    assert "choose a folder you can write to" in err
    assert list(tmp_path.iterdir()) == []


def test_sheet_write_failure_removes_the_maps_of_that_run(tmp_path, capsys, monkeypatch):
    """The maps were written, the sheet fails (disk full): the run takes its maps back, so a
    failed run leaves nothing; files of earlier runs stay."""
    earlier = tmp_path / f"{FILE_PREFIX}_00001_00_color.png"
    earlier.write_bytes(b"earlier run")
    monkeypatch.setattr(lumix_core.toy.demo, "write_bytes_atomically", _raise_on_write(errno.ENOSPC))
    err = failed(["demo", "--out", str(tmp_path), "--steps", "2"], capsys)
    assert "No space left on device" in err and f"{FILE_PREFIX}_00002_sheet.png" in err
    assert sorted(tmp_path.iterdir()) == [earlier] and earlier.read_bytes() == b"earlier run"


def test_damaged_shipped_weights_say_reinstall_and_others_download(tmp_path, capsys, monkeypatch):
    import lumix_core.toy.model as toy_model

    shipped = (tmp_path / "weights").resolve()
    shutil.copytree(toy_model.WEIGHTS_DIR, shipped)
    adapter = shipped / toy_model.ADAPTER_FILE
    adapter.write_bytes(adapter.read_bytes()[:1000])
    monkeypatch.setattr(toy_model, "WEIGHTS_DIR", shipped)
    out = tmp_path / "out"
    err = failed(["demo", "--out", str(out)], capsys)
    assert "adapter.safetensors: the file is truncated" in err and "ships with the package, so reinstall it" in err
    assert "download" not in err
    assert not out.exists()
    # The same damage in a folder of the user's own is a download to fetch again.
    err = failed(["demo", "--out", str(out), "--weights", str(tmp_path / "mine")], capsys)  # missing folder
    assert "make one with python -m lumix_core.toy.reproduce" in err
    mine = tmp_path / "mine"
    shutil.copytree(shipped, mine)
    err = failed(["demo", "--out", str(out), "--weights", str(mine)], capsys)
    assert "truncated" in err and "download it again" in err and "reinstall" not in err
    # A shipped file that is missing: reinstall too.
    (shipped / toy_model.TEXT_FILE).unlink()
    err = failed(["demo", "--out", str(out)], capsys)
    assert "missing text_encoder.safetensors" in err and "reinstall" in err
    assert not out.exists()

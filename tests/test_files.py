import os

import pytest

from lumix_core.io.files import write_atomically, write_bytes_atomically, write_text_atomically


def test_refuses_an_existing_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "taken.png"
    target.write_bytes(b"original")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_bytes_atomically(target, b"new", overwrite=False)
    assert target.read_bytes() == b"original"
    assert os.listdir(tmp_path) == ["taken.png"]


def test_overwrite_replaces_and_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    write_text_atomically(target, "one")
    write_text_atomically(target, "two")
    assert target.read_text() == "two"

    def broken(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(tmp_path / "b.txt", broken)
    assert sorted(os.listdir(tmp_path)) == ["sub"]
    assert os.listdir(tmp_path / "sub") == ["a.txt"]


def test_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    from lumix_core.io import files

    path = write_bytes_atomically(tmp_path / "a.png", b"x", overwrite=False)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~files._UMASK

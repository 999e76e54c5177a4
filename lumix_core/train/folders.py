"""Output folders and small files written so that a crash never leaves half a result.

Why: a training run or a cache takes hours to produce. Single files go through
:mod:`lumix_core.io.files`; a cache or checkpoint folder is built under a temp name and renamed
when complete, and an existing folder is replaced only
when the user asked for it -- and only if it is recognisably ours (it holds our marker
file), so a mistyped ``--output ~`` with ``--overwrite`` deletes nothing.

A process killed while writing its first file (the marker itself) leaves a folder holding
only that file's temp copy. Such a folder counts as unused: a new start (and
``--overwrite``) takes it over and deletes the leftovers -- they are ours and incomplete by
construction -- instead of refusing a folder that only hand-deleting could free.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from ..io.files import is_temp_name


def is_unused_dir(path: Path, marker: str) -> bool:
    """A folder that is empty or holds only temp copies of ``marker`` (an interrupted first write)."""
    return path.is_dir() and all(is_temp_name(p.name, marker) for p in path.iterdir())


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_temp_files(folder: Path, *, marker: "str | None" = None) -> list[Path]:
    """Delete our temp files and folders inside ``folder``, at any depth, and return them.

    With ``marker``: only its temp copies, at the top level (what an interrupted first
    write leaves). Without: every temp name -- call this only on a folder known to be ours.
    """
    removed = []
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            if is_temp_name(name, marker):
                removed.append(Path(parent) / name)
                _delete(removed[-1])
        dirs[:] = [] if marker is not None else [d for d in dirs if not is_temp_name(d)]
    return removed


def _refuse_foreign(path: Path, marker: str, what: str) -> None:
    if not (path / marker).is_file():
        raise FileExistsError(
            f"{path} exists and is not a {what} (no {marker} inside); refusing to delete it even with "
            "--overwrite. Choose another folder or remove it yourself.")


def check_new_folder(path: "str | os.PathLike[str]", *, overwrite: bool, marker: str, what: str) -> Path:
    """Raise unless ``path`` is absent, unused (:func:`is_unused_dir`), or (with ``overwrite``)
    a previous ``what``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is a file, not a folder")
    if path.exists() and not is_unused_dir(path, marker):
        if not overwrite:
            raise FileExistsError(f"{path} already exists and is not empty; pass --overwrite to replace the "
                                  f"{what}, or choose another folder")
        _refuse_foreign(path, marker, what)
    return path


def remove_previous(path: Path, *, marker: str, what: str) -> None:
    """Delete a previous ``what`` at ``path`` (only if it carries ``marker``)."""
    if path.exists() and not is_unused_dir(path, marker):
        _refuse_foreign(path, marker, what)
        shutil.rmtree(path)


class FolderBuilder:
    """Build a folder under a temp name beside ``target``; :meth:`commit` renames it into place.

    Used as a context manager: leaving it without :meth:`commit` (an error, Ctrl-C) removes
    the temp folder, so the target is either the complete new folder or untouched.
    """

    def __init__(self, target: "str | os.PathLike[str]", *, overwrite: bool, marker: str, what: str) -> None:
        self.target = check_new_folder(target, overwrite=overwrite, marker=marker, what=what)
        self.marker, self.what = marker, what
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent))
        self.committed = False

    def __enter__(self) -> "FolderBuilder":
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self) -> Path:
        """Move the finished folder into place (the old one, if any, is removed after the swap)."""
        if not (self.tmp / self.marker).is_file():
            raise RuntimeError(f"internal: {self.what} finished without its {self.marker}")
        old = None
        if self.target.exists():
            if is_unused_dir(self.target, self.marker):
                shutil.rmtree(self.target)
            else:
                _refuse_foreign(self.target, self.marker, self.what)
                old = self.target.with_name(f".{self.target.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

"""Output folders and small files written so that a crash never leaves half a result.

Why: a training run or a cache takes hours to produce. Single files go through
:mod:`lumix_core.files`; a cache or checkpoint folder is built under a temp name and renamed
when complete, and an existing folder is replaced only
when the user asked for it -- and only if it is recognisably ours (it holds our marker
file), so a mistyped ``--output ~`` with ``--overwrite`` deletes nothing.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _refuse_foreign(path: Path, marker: str, what: str) -> None:
    if not (path / marker).is_file():
        raise FileExistsError(
            f"{path} exists and is not a {what} (no {marker} inside); refusing to delete it even with "
            "--overwrite. Choose another folder or remove it yourself.")


def check_new_folder(path: "str | os.PathLike[str]", *, overwrite: bool, marker: str, what: str) -> Path:
    """Raise unless ``path`` is absent, empty, or (with ``overwrite``) a previous ``what``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is a file, not a folder")
    if path.exists() and not is_empty_dir(path):
        if not overwrite:
            raise FileExistsError(f"{path} already exists and is not empty; pass --overwrite to replace the "
                                  f"{what}, or choose another folder")
        _refuse_foreign(path, marker, what)
    return path


def remove_previous(path: Path, *, marker: str, what: str) -> None:
    """Delete a previous ``what`` at ``path`` (only if it carries ``marker``)."""
    if path.exists() and not is_empty_dir(path):
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
            if is_empty_dir(self.target):
                self.target.rmdir()
            else:
                _refuse_foreign(self.target, self.marker, self.what)
                old = self.target.with_name(f".{self.target.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

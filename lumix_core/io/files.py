"""Writing files so that a crash never leaves half a file and nothing is overwritten by surprise.

Every writer in the project goes through :func:`write_atomically`: the content is written to
a temp file in the target folder, then published under its final name. With
``overwrite=False`` publishing is a hard link, which fails if the name is taken — so even a
concurrent writer cannot be overwritten; file systems without hard links fall back to an
existence check plus rename. With ``overwrite=True`` it is an atomic ``os.replace``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

#: Temp files and folders are named ``.<final name>.<random>.tmp`` beside their target, so
#: what a killed process left behind is recognisable as ours (and safe to delete).
TEMP_SUFFIX = ".tmp"


def temp_prefix(name: str) -> str:
    """The start of every temp name for a file or folder that will be called ``name`` (the name
    cut to :func:`_short`, so a temp name fits wherever the final name fits)."""
    return f".{_short(name)}."


def is_temp_name(name: str, target: "str | None" = None) -> bool:
    """Whether ``name`` is one of our temp names (for ``target`` only, if given)."""
    if target is not None:
        return name.startswith(temp_prefix(target)) and name.endswith(TEMP_SUFFIX)
    return name.startswith(".") and name.endswith(TEMP_SUFFIX) and len(name) > len(TEMP_SUFFIX) + 1


def write_atomically(path: "str | os.PathLike[str]", write: Callable[[str], None], *,
                     overwrite: bool = False) -> Path:
    """Call ``write(temp_path)``, then publish the temp file as ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise FileExistsError(f"refusing to overwrite existing file {path}")
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        if overwrite:
            os.replace(tmp, path)
            return path
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"refusing to overwrite existing file {path}") from None
        except OSError:  # no hard links on this file system
            if path.exists():
                raise FileExistsError(f"refusing to overwrite existing file {path}") from None
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _short(name: str, limit: int = 64) -> str:
    """At most ``limit`` UTF-8 bytes of ``name``: a temp name must fit wherever the final name fits."""
    return name.encode("utf-8", "surrogateescape")[:limit].decode("utf-8", "ignore")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Read once at import: reading the umask means setting it, which must not race other threads.
_UMASK = _read_umask()


def _bytes_writer(data: bytes) -> Callable[[str], None]:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return write


def write_bytes_atomically(path: "str | os.PathLike[str]", data: bytes, *, overwrite: bool = True) -> Path:
    return write_atomically(path, _bytes_writer(data), overwrite=overwrite)


def write_text_atomically(path: "str | os.PathLike[str]", text: str, *, overwrite: bool = True) -> Path:
    return write_bytes_atomically(path, text.encode("utf-8"), overwrite=overwrite)

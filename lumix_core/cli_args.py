"""Checks of command-line values shared by the ``lumix`` subcommands (and any later one).

Why here and as argparse ``type=`` functions: a bad value must be refused with one line that
names the flag, the problem and the fix, *before* the model loads or a folder is made, and
every subcommand taking ``--out``, ``--seed``, ``--cfg`` or ``--threads`` should refuse the
same values with the same words. :class:`OneLineParser` prints argparse's errors as that one
line (argparse's default is the whole usage block first).

May import: nothing from lumix_core.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import NoReturn

#: Seeds are 64-bit unsigned, as in ComfyUI's seed widget; torch's generator takes exactly
#: this range (it would also take negatives, as aliases of large seeds: -1 == 2**64 - 1).
SEED_MAX = 2**64 - 1


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def seed_value(text: str) -> int:
    """``--seed``: a whole number in ``[0, 2**64 - 1]``."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"the seed must be a whole number from 0 to {SEED_MAX}, got '{text}'")
    return seed


def positive_int(text: str) -> int:
    """A whole number >= 1 (``--steps``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got '{text}'")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (``--start-frame``)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 0, got '{text}'")
    return value


def thread_count(text: str) -> int:
    """``--threads``: a whole number >= 1; 0 and negatives are refused, not read as 1."""
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"the thread count must be a whole number of at least 1 (this machine has {os.cpu_count()} "
            f"cores; 1 is best on a small or busy machine), got '{text}'") from None


def guidance_scale(text: str) -> float:
    """``--cfg``: true classifier-free guidance, a finite number >= 1.

    1 switches guidance off; below 1 the prompt is weakened or, for negative values, inverted
    (the sampler then extrapolates away from it and returns noise); NaN makes every map black.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1.0):
        raise argparse.ArgumentTypeError(
            f"the guidance scale must be a finite number of at least 1 (1 = no guidance, higher follows the "
            f"prompt more closely), got '{text}'")
    return value


def output_folder(text: str) -> Path:
    """``--out``: a folder that exists or can be made, and that this process may write into.

    Checked from the nearest existing ancestor without creating anything, so a refused run
    leaves no empty folder behind. ``os.access`` reports a read-only file system (EROFS)
    and an immutable folder (EPERM) even for root, for whom permission bits do not count.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError("the output folder is empty; name a folder (--out . writes into the "
                                         "current one)")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a file, not a folder; choose a folder")
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise argparse.ArgumentTypeError(f"'{text}' cannot be made: '{existing}' is a broken link")
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' cannot be made: '{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"cannot write into '{existing}' ({_why_not_writable(existing)}); choose a folder you can write to")
    return path


def _why_not_writable(folder: Path) -> str:
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return "it is on a read-only file system"
    return "no write permission, or the folder is immutable"


def write_error(folder: "str | os.PathLike[str]", error: OSError) -> str:
    """One line for an ``OSError`` met while writing results into ``folder`` (a disk that
    fills up or turns read-only after :func:`output_folder` passed)."""
    where = f" ({error.filename})" if error.filename else ""
    return f"cannot write into '{folder}': {error.strerror or error}{where}; choose a folder you can write to"

"""Seeded initialisation that leaves the global RNG alone.

Why: a toy training run must be fixed by its own settings' seed, whatever drew random numbers
before it in the process (tests, a second run, an evaluation); a plain ``torch.manual_seed``
would also reset everyone else's stream.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch


@contextlib.contextmanager
def seeded(seed: Optional[int]) -> Iterator[None]:
    """Random draws inside come from ``seed`` and the global CPU RNG is restored after; None:
    the global RNG, untouched."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield

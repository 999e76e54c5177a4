"""Decompose a shot chunk by chunk: memory for the model bounded by the chunk, not the shot.

The driver knows nothing of the model: it hands ``decompose`` consecutive slices of the frames
and writes what comes back into one output batch per map. Frame-aligned: output ``i`` is the
decomposition of frame ``i``. A decomposition that treats frames independently (the one-step
adapter; sampling with one noise per shot) gives the same maps for any chunk size.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
from torch import Tensor

__all__ = ["ChunkDecomposer", "Progress", "check_chunk", "decompose_shot"]

#: ``frames [n, H, W, 3] -> {map: [n, H', W', C]}``: one chunk's maps, frame-aligned.
ChunkDecomposer = Callable[[Tensor], Mapping[str, Tensor]]
#: ``(frames done, frames in the shot)``, called after every chunk; may raise to stop the shot.
Progress = Callable[[int, int], None]


def check_chunk(chunk: int) -> int:
    if int(chunk) < 1:
        raise ValueError(f"LumiX: frames per chunk must be at least 1, got {chunk}")
    return int(chunk)


def decompose_shot(frames: Tensor, decompose: ChunkDecomposer, chunk: int, *,
                   progress: Optional[Progress] = None) -> dict[str, Tensor]:
    """``{map: [T, ...]}`` for the frames ``[T, H, W, 3]``, ``decompose`` called on at most ``chunk``
    frames at a time, in order; ``progress`` after each chunk."""
    chunk = check_chunk(chunk)
    if frames.dim() != 4 or frames.shape[0] < 1:
        raise ValueError(f"LumiX: a shot is a batch of frames [T, H, W, C] with T >= 1, got {tuple(frames.shape)}")
    total = frames.shape[0]
    out: dict[str, Tensor] = {}
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        maps = decompose(frames[start:stop])
        for name, m in maps.items():
            if m.shape[0] != stop - start:
                raise ValueError(f"LumiX: the decomposition returned {m.shape[0]} {name} frames for a chunk of "
                                 f"{stop - start}; it must return one map per frame")
            if name not in out:
                out[name] = torch.empty((total, *m.shape[1:]), dtype=m.dtype, device=m.device)
            out[name][start:stop] = m
        if progress is not None:
            progress(stop, total)
    return out

"""The toy as a shot decomposer: frames in, frame-aligned maps out, one chunk at a time.

What :func:`lumix_core.shot.chunks.decompose_shot` calls for ``lumix decompose --sequence`` and
the shot table (:mod:`.shot_eval`). One-step adapter: one deterministic call per chunk, each frame
independent of the others in its chunk. Multi-step adapter: one noise per shot -- every frame is
sampled from the same seed's noise (one scene per call, so the chunk bounds memory and the noise
does not depend on a frame's place in its chunk). Either way any chunk size gives the same maps.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..shot.chunks import ChunkDecomposer
from .backbone import IMAGE_SIZE, SAMPLE_STEPS
from .decompose import at_size, decompose_photo, resize_image
from .model import ToyLumiX


def toy_chunk_decomposer(model: ToyLumiX, *, prompt: str = "", steps: int = SAMPLE_STEPS,
                         seed: int = 0) -> ChunkDecomposer:
    """``frames [n, H, W, 3] -> {map: [n, H, W, 3]}`` at the frames' size, as :func:`.decompose.decompose_photo`
    does for one photo."""
    def decompose(frames: Tensor) -> dict[str, Tensor]:
        if not model.one_step:  # one scene per call, every frame from the seed's noise
            per = [decompose_photo(model, f, prompt=prompt, steps=steps, seed=seed) for f in frames]
            return {k: torch.stack([p[k] for p in per]) for k in per[0]}
        n, h, w = frames.shape[:3]
        small = torch.stack([resize_image(f, IMAGE_SIZE, IMAGE_SIZE) for f in frames])
        with torch.inference_mode():
            images = {k: m.image for k, m in model.generate([prompt] * n, true_cfg=1.0, color=small).items()}
        return {k: torch.stack([at_size(k, im, h, w) for im in v]) for k, v in images.items()}

    return decompose


__all__ = ["toy_chunk_decomposer"]

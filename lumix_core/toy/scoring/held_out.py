"""The held-out scenes every score uses, their true maps, and the sampling settings of a scoring run.

Held-out scenes come from their own seed stream (:data:`lumix_core.toy.seed_streams.EVAL_DATA_SEED`),
disjoint from the stage-1 and stage-2 training streams.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ...world.dataset import scene_seed
from ...world.render import RenderResult, render
from ...world.scene import sample_scene
from ..backbone import IMAGE_SIZE, SAMPLE_STEPS, TRUE_CFG
from ..seed_streams import EVAL_DATA_SEED


@dataclass(frozen=True)
class EvalSettings:
    scenes: int = 64
    seed: int = 0
    steps: int = SAMPLE_STEPS
    true_cfg: float = TRUE_CFG
    batch: int = 8


def stream_scenes(data_seed: int, count: int, size: int = IMAGE_SIZE) -> list[RenderResult]:
    """The first ``count`` scenes of the synthetic world's stream ``data_seed``, rendered at ``size``."""
    return [render(sample_scene(scene_seed(data_seed, i)), size) for i in range(count)]


def held_out_scenes(count: int, size: int = IMAGE_SIZE, data_seed: int = EVAL_DATA_SEED) -> list[RenderResult]:
    return stream_scenes(data_seed, count, size)


def truth_of(result: RenderResult) -> dict[str, np.ndarray]:
    """The raw buffers :func:`lumix_core.world.metrics.evaluate_maps` scores against."""
    return {"depth": result.depth, "normal": result.normal, "albedo": result.albedo,
            "irradiance": result.irradiance, "hit": result.hit}


def color_images(scenes: Sequence[RenderResult]) -> torch.Tensor:
    """The scenes' color images ``[N, H, W, 3]``: the photos a decomposition pins."""
    return torch.from_numpy(np.stack([r.encode(["color"])["color"] for r in scenes]))


__all__ = ["EvalSettings", "held_out_scenes", "truth_of", "color_images"]

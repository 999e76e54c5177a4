"""Does "light from the left" light the left half of the irradiance?

The model's check (:func:`light_left_minus_right`) generates the same prompt and seed with
"light from the left" and "light from the right" and compares the left halves of the two
irradiance maps; the world's own check (:func:`mirrored_light_pairs`) renders held-out scenes
again with their main light mirrored. Both count as following when the difference is at least
:data:`VISIBLE_STEP`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ...world.dataset import scene_seed
from ...world.render import render
from ...world.scene import SceneSpec, main_light_word, mirror_main_light, sample_scene
from ..backbone import IMAGE_SIZE
from ..model import ToyLumiX
from ..seed_streams import EVAL_DATA_SEED
from .held_out import EvalSettings

#: "Visibly brighter": the left-half irradiance difference, in 8-bit steps, of the light test.
VISIBLE_STEP = 5.0 / 255.0
#: The light-following prompt, completed with "the left" or "the right".
LIGHT_PROMPT = "a white sphere and a gray box on a gray floor, light from "
#: Sampling seed of the light check's seed ``i``: LIGHT_SEED_OFFSET + i (+ the settings' seed).
LIGHT_SEED_OFFSET = 2000


def light_scores(diffs: Sequence[float]) -> dict[str, float]:
    """Left-minus-right differences (one per seed or scene, in [0, 1]) as scores: ``light_following``
    (the share of at least :data:`VISIBLE_STEP`), ``light_left_minus_right`` and its sem (8-bit)."""
    d = np.array(diffs)
    return {"light_following": float(np.mean(d >= VISIBLE_STEP)), "light_left_minus_right": float(d.mean() * 255),
            "light_left_minus_right_sem": float(d.std(ddof=1) / np.sqrt(len(d)) * 255)}


def left_half_mean(image: np.ndarray | torch.Tensor) -> float:
    """Mean of the left half (columns) of an image ``[H, W, C]``: what the light-following checks compare."""
    return float(image[:, : image.shape[1] // 2].mean())


def light_left_minus_right(model: ToyLumiX, settings: EvalSettings, index: int) -> float:
    """Left-half mean of the irradiance generated for "light from the left" minus that for "light
    from the right" (the check's seed ``index``, the same for both; in [0, 1] units): what the
    light-following check thresholds."""
    seed = settings.seed + LIGHT_SEED_OFFSET + index
    halves = [left_half_mean(model.generate([LIGHT_PROMPT + side], seed=seed, steps=settings.steps,
                                            true_cfg=settings.true_cfg)["irradiance"].image[0])
              for side in ("the left", "the right")]
    return halves[0] - halves[1]


def mirrored_light_pairs(count: int, transform: Callable[[SceneSpec], SceneSpec] = lambda spec: spec
                         ) -> list[tuple[np.ndarray, np.ndarray]]:
    """True irradiance ``(lit from the left, lit from the right)``, each ``[H, W, 3]``, of the
    first ``count`` held-out scenes whose main light comes from the left or right: the scene
    (after ``transform``) and the same scene with its main light mirrored (:func:`mirror_main_light`)."""
    pairs, i = [], 0
    while len(pairs) < count:
        spec = sample_scene(scene_seed(EVAL_DATA_SEED, i))
        i += 1
        word = main_light_word(spec)
        if word not in ("left", "right"):
            continue
        spec = transform(spec)
        lit, mirrored = (render(s, IMAGE_SIZE).encode()["irradiance"] for s in (spec, mirror_main_light(spec)))
        pairs.append((lit, mirrored) if word == "left" else (mirrored, lit))
    return pairs


__all__ = ["VISIBLE_STEP", "LIGHT_PROMPT", "LIGHT_SEED_OFFSET", "light_scores", "left_half_mean",
           "light_left_minus_right", "mirrored_light_pairs"]

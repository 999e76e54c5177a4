"""Scores of sampled maps: decomposition against ground truth, coherence of generated maps.

* **decomposition** (:func:`evaluate_decomposition`): the held-out render's color image is
  pinned in the color slot (clean, t = 0, never updated -- the release's photo
  decomposition, guidance 1, no negative pass) and the other maps are sampled **with the
  empty caption**, as a user decomposing a photo has none. Scored against that render's
  ground truth (:func:`lumix_core.world.metrics.evaluate_maps`): normal angular error, depth
  AbsRel after a scale/shift fit, albedo and irradiance si-MSE in linear light; plus
  ``reads_photo_*`` (:func:`reads_photo`).
* **generation** (:func:`evaluate_generation`): all five maps from the held-out caption
  alone, scored by :func:`lumix_core.world.metrics.map_coherence` (does albedo x irradiance give
  the color, do the depth's slopes give the normals?) -- no ground truth exists for them.

Every score is a mean over scenes with its standard error (:func:`mean_and_sem`), and tables
print both (:func:`format_score`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ...conventions import FinishedMap
from ...world.metrics import evaluate_maps, map_coherence
from ...world.render import RenderResult
from ..model import ToyLumiX
from .held_out import EvalSettings, color_images, truth_of

GT_METRICS = ("normal_angular_error_deg", "depth_abs_rel", "albedo_si_mse", "irradiance_si_mse")
#: A decomposition's scores: accuracy against the truth and whether it reads its photo (:func:`reads_photo`).
DECOMPOSITION_SCORES = GT_METRICS + ("reads_photo_depth", "reads_photo_normal")
COHERENCE_METRICS = ("recompose_error", "depth_normal_error_deg")


def mean_and_sem(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean over scenes of every score, plus ``<score>_sem``: its standard error over scenes
    (scene-to-scene spread / sqrt(n)), so a table can say which differences are noise."""
    out: dict[str, float] = {}
    for k in rows[0]:
        values = np.array([r[k] for r in rows], dtype=np.float64)
        out[k] = float(values.mean())
        out[f"{k}_sem"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return out


def format_score(scores: dict[str, float], key: str) -> str:
    """``scores[key]`` for a table, with ``± <key>_sem`` where there is one; "–" if absent."""
    if key not in scores:
        return "–"
    sem = scores.get(f"{key}_sem")
    digits = 4 if abs(scores[key]) < 0.1 else 3 if abs(scores[key]) < 10 else 1
    return f"{scores[key]:.{digits}f}" + (f" ± {sem:.{digits}f}" if sem and np.isfinite(sem) else "")


def _scene_maps(maps: dict[str, FinishedMap], n: int) -> dict[str, torch.Tensor]:
    return {name: m.image[n] for name, m in maps.items()}


def reads_photo(rows: list[dict[str, float]], predictions: list[dict[str, torch.Tensor]],
                scenes: Sequence[RenderResult]) -> None:
    """Add ``reads_photo_depth`` / ``reads_photo_normal`` (1 or 0) to each scene's row: is the
    prediction closer to its own truth than to the next scene's? Chance is ~0.5 (a model that
    ignores its photo)."""
    n = len(scenes)
    for i, (row, pred) in enumerate(zip(rows, predictions)):
        other = evaluate_maps({"depth": pred["depth"], "normal": pred["normal"]}, truth_of(scenes[(i + 1) % n]))
        row["reads_photo_depth"] = float(row["depth_abs_rel"] < other["depth_abs_rel"])
        row["reads_photo_normal"] = float(row["normal_angular_error_deg"] < other["normal_angular_error_deg"])


def evaluate_decomposition(model: ToyLumiX, scenes: Sequence[RenderResult], settings: EvalSettings,
                           caption: bool = False, coherence: bool = True) -> dict[str, float]:
    """Mean GT metrics of maps sampled with each scene's color pinned (empty caption unless
    ``caption``), the reads-the-photo fractions, and (``coherence``) :func:`map_coherence`."""
    rows, predictions = [], []
    for start in range(0, len(scenes), settings.batch):
        chunk = scenes[start: start + settings.batch]
        prompts = [r.caption if caption else "" for r in chunk]
        maps = model.generate(prompts, seed=settings.seed + start, steps=settings.steps, true_cfg=1.0,
                              color=color_images(chunk))
        for n, result in enumerate(chunk):
            pred = _scene_maps(maps, n)
            scores = evaluate_maps(pred, truth_of(result))
            if coherence:
                scores.update(map_coherence(pred))
            scores["normal_deviation"] = float(maps["normal"].deviation[n].mean())
            rows.append(scores)
            predictions.append(pred)
    reads_photo(rows, predictions, scenes)
    return mean_and_sem(rows)


def evaluate_generation(model: ToyLumiX, scenes: Sequence[RenderResult], settings: EvalSettings,
                        shared_noise: bool = True) -> dict[str, float]:
    """Mean coherence of maps sampled from each held-out caption alone (``shared_noise=False``:
    the one-noise-per-map control)."""
    rows = []
    for start in range(0, len(scenes), settings.batch):
        chunk = scenes[start: start + settings.batch]
        maps = model.generate([r.caption for r in chunk], seed=settings.seed + start, steps=settings.steps,
                              true_cfg=settings.true_cfg, shared_noise=shared_noise)
        for n in range(len(chunk)):
            scores = map_coherence(_scene_maps(maps, n))
            scores["normal_deviation"] = float(maps["normal"].deviation[n].mean())
            rows.append(scores)
    return mean_and_sem(rows)


__all__ = ["GT_METRICS", "DECOMPOSITION_SCORES", "COHERENCE_METRICS", "mean_and_sem", "format_score", "reads_photo",
           "evaluate_decomposition", "evaluate_generation"]

"""Scoring a toy model against the synthetic world's ground truth, on held-out scenes.

Two protocols, because a caption does not pin down a scene (where exactly the box stands,
which way the floor's stripes run), so maps generated from a caption cannot be compared
pixel by pixel with the render the caption came from:

* **decomposition** (``decompose``): the held-out render's color image is pinned in the
  color slot (clean, t = 0, never updated -- the release's photo decomposition, guidance 1,
  no negative pass) and the other maps are sampled; they are scored against that render's
  ground truth: normal angular error, depth AbsRel after a scale/shift fit, albedo si-MSE
  (:mod:`lumix_core.metrics`), and every map's edge agreement with the color image.
* **generation** (``generate``): all five maps are sampled from the held-out caption alone;
  only the cross-map alignment (edge agreement of each map with the *generated* color map)
  is scored -- the coherence QBA and Tensor LoRA are meant to improve.

Held-out scenes come from their own seed stream (:data:`EVAL_DATA_SEED`), disjoint from
the stage-1 (seed 1) and stage-2 (seed 2) training streams.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..conventions import FinishedMap, renormalize_normals
from ..metrics import cross_map_alignment, evaluate_maps
from ..world import RenderResult, render, sample_scene
from ..world_dataset import scene_seed
from . import vae
from .backbone import IMAGE_SIZE, SAMPLE_STEPS, TRUE_CFG
from .model import ToyLumiX

#: Seed stream of the held-out scenes (stage 1 trains on stream 1, stage 2 on stream 2).
EVAL_DATA_SEED = 3
#: Maps whose alignment with color is averaged into the one alignment score.
ALIGNED_MAPS = ("albedo", "irradiance", "depth", "normal")
GT_METRICS = ("normal_angular_error_deg", "depth_abs_rel", "albedo_si_mse")


def held_out_scenes(count: int, size: int = IMAGE_SIZE, data_seed: int = EVAL_DATA_SEED) -> list[RenderResult]:
    return [render(sample_scene(scene_seed(data_seed, i)), size) for i in range(count)]


def truth_of(result: RenderResult) -> dict[str, np.ndarray]:
    """The raw buffers :func:`lumix_core.metrics.evaluate_maps` scores against."""
    return {"depth": result.depth, "normal": result.normal, "albedo": result.albedo, "hit": result.hit}


def alignment_score(scores: dict[str, float]) -> float:
    """Mean edge agreement with color over :data:`ALIGNED_MAPS` (keys ``alignment_<map>``)."""
    return float(np.mean([scores[f"alignment_{m}"] for m in ALIGNED_MAPS]))


def _mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean over scenes of every score, plus ``<score>_sem``: its standard error over scenes
    (scene-to-scene spread / sqrt(n)), so a table can say which differences are noise."""
    out: dict[str, float] = {}
    for k in rows[0]:
        values = np.array([r[k] for r in rows], dtype=np.float64)
        out[k] = float(values.mean())
        out[f"{k}_sem"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return out


def _scene_maps(maps: dict[str, FinishedMap], n: int) -> dict[str, torch.Tensor]:
    return {name: m.image[n] for name, m in maps.items()}


@dataclass(frozen=True)
class EvalSettings:
    scenes: int = 64
    seed: int = 0
    steps: int = SAMPLE_STEPS
    true_cfg: float = TRUE_CFG
    batch: int = 8


def evaluate_decomposition(model: ToyLumiX, scenes: Sequence[RenderResult], settings: EvalSettings) -> dict[str, float]:
    """Mean GT metrics and alignment of maps sampled with each scene's color pinned."""
    rows = []
    for start in range(0, len(scenes), settings.batch):
        chunk = scenes[start: start + settings.batch]
        color = torch.from_numpy(np.stack([r.encode(["color"])["color"] for r in chunk]))
        maps = model.generate([r.caption for r in chunk], seed=settings.seed + start, steps=settings.steps,
                              true_cfg=1.0, color=color)
        for n, result in enumerate(chunk):
            scores = evaluate_maps(_scene_maps(maps, n), truth_of(result))
            scores["alignment"] = alignment_score(scores)
            scores["normal_deviation"] = float(maps["normal"].deviation[n].mean())
            rows.append(scores)
    return _mean(rows)


def evaluate_generation(model: ToyLumiX, scenes: Sequence[RenderResult], settings: EvalSettings,
                        shared_noise: bool = True) -> dict[str, float]:
    """Mean alignment of maps sampled from each held-out caption alone (``shared_noise=False``:
    the one-noise-per-map control)."""
    rows = []
    for start in range(0, len(scenes), settings.batch):
        chunk = scenes[start: start + settings.batch]
        maps = model.generate([r.caption for r in chunk], seed=settings.seed + start, steps=settings.steps,
                              true_cfg=settings.true_cfg, shared_noise=shared_noise)
        for n in range(len(chunk)):
            scores = {f"alignment_{k}": v for k, v in cross_map_alignment(_scene_maps(maps, n)).items()}
            scores["alignment"] = alignment_score(scores)
            scores["normal_deviation"] = float(maps["normal"].deviation[n].mean())
            rows.append(scores)
    return _mean(rows)


def reference_scores(scenes: Sequence[RenderResult]) -> dict[str, dict[str, float]]:
    """What the metrics give without a model, for scale:

    * ``ground_truth``: the renders' own maps (alignment of the true maps with the true color
      -- the ceiling a perfect model would reach; GT metrics are 0 by construction);
    * ``ground_truth_vae``: the true maps after the toy VAE's round trip (:func:`vae.round_trip`)
      -- the ceiling of a model that must speak through that VAE;
    * ``trivial``: every normal facing the camera, a flat depth map, the color image taken as
      albedo -- the floor a model must beat to have learned anything.
    """
    gt_rows, vae_rows, trivial_rows = [], [], []
    for r in scenes:
        enc = {k: torch.from_numpy(v) for k, v in r.encode().items()}
        for maps, rows in ((enc, gt_rows), ({k: vae.round_trip(v[None])[0] for k, v in enc.items()}, vae_rows)):
            scores = evaluate_maps(maps, truth_of(r))
            scores["alignment"] = alignment_score(scores)
            rows.append(scores)
        h, w = r.hit.shape
        facing = torch.tensor([0.5, 0.5, 1.0]).expand(h, w, 3)
        flat = torch.full((h, w, 3), 0.5)
        trivial = evaluate_maps({"normal": facing, "depth": flat, "albedo": enc["color"]}, truth_of(r))
        trivial_rows.append(trivial)
    return {"ground_truth": _mean(gt_rows), "ground_truth_vae": _mean(vae_rows), "trivial": _mean(trivial_rows)}


def random_normal_deviation(shape: tuple[int, int], seed: int = 0) -> float:
    """Mean unit-length deviation (as :func:`lumix_core.conventions.renormalize_normals`
    measures it) of a normal map of uniform noise in [0, 1]: what noise scores (~0.22)."""
    g = torch.Generator().manual_seed(seed)
    _, deviation = renormalize_normals(torch.rand((1, *shape, 3), generator=g))
    return float(deviation.mean())


__all__ = ["EVAL_DATA_SEED", "ALIGNED_MAPS", "GT_METRICS", "EvalSettings", "held_out_scenes", "truth_of",
           "alignment_score", "evaluate_decomposition", "evaluate_generation", "reference_scores",
           "random_normal_deviation"]

"""What the metrics give without a model, for scale (:func:`reference_scores`): the true maps,
the true maps through the toy VAE, the trivial guesses, the per-pixel prior of the training
scenes, and the two cheap ways to look coherent (color copied into every map, one noise per map).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from ...conventions import renormalize_normals
from ...world.metrics import evaluate_maps, map_coherence
from ...world.render import RenderResult
from .. import vae
from ..backbone import IMAGE_SIZE
from ..seed_streams import STAGE2_DATA_SEED
from .held_out import stream_scenes, truth_of
from .map_scores import mean_and_sem

#: Training scenes averaged into the ``prior`` reference (from the stage-2 seed stream).
PRIOR_SCENES = 64


def _luminance_guess(color: torch.Tensor) -> torch.Tensor:
    return color.mean(dim=-1, keepdim=True).expand_as(color)


def reference_scores(scenes: Sequence[RenderResult], seed: int = 0) -> dict[str, dict[str, float]]:
    """What the metrics give without a model, for scale:

    * ``ground_truth``: the renders' own maps (GT metrics 0 by construction; their coherence
      is the ceiling a perfect model reaches);
    * ``ground_truth_vae``: the true maps after the toy VAE's round trip (:func:`vae.round_trip`)
      -- the ceiling of a model that must speak through that VAE;
    * ``trivial``: every normal facing the camera, a flat depth map, the color image taken as
      albedo and its luminance as irradiance -- the floor a model must beat;
      ``trivial_flat_irradiance``: a constant irradiance;
    * ``copy_color`` / ``independent_noise``: the color pasted into every map, and one uniform
      noise image per map -- what "coherence" must not reward;
    * ``prior``: the same maps for every scene, the per-pixel mean of :data:`PRIOR_SCENES`
      training scenes (:func:`prior_maps`) -- the best a model that ignores its photo can do
      under a squared loss, and a much harder bar than the trivial guesses (the floor's average
      gradient is most of a depth map). A model that reads its photo must beat it.
    """
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in (
        "ground_truth", "ground_truth_vae", "trivial", "trivial_flat_irradiance", "prior", "copy_color",
        "independent_noise")}
    g = torch.Generator().manual_seed(seed)
    prior = prior_maps(size=scenes[0].hit.shape[0]) if scenes else {}

    def scored(maps: dict[str, torch.Tensor], truth: dict[str, np.ndarray]) -> dict[str, float]:
        return {**evaluate_maps(maps, truth), **map_coherence(maps)}

    for r in scenes:
        enc = {k: torch.from_numpy(v) for k, v in r.encode().items()}
        truth = truth_of(r)
        rows["ground_truth"].append(scored(enc, truth))
        rows["ground_truth_vae"].append(scored({k: vae.round_trip(v[None])[0] for k, v in enc.items()}, truth))
        h, w = r.hit.shape
        facing = torch.tensor([0.5, 0.5, 1.0]).expand(h, w, 3)
        flat = torch.full((h, w, 3), 0.5)
        color = enc["color"]
        rows["trivial"].append(scored({"normal": facing, "depth": flat, "albedo": color,
                                       "irradiance": _luminance_guess(color)}, truth))
        rows["trivial_flat_irradiance"].append(scored({"irradiance": flat}, truth))
        rows["prior"].append(scored(prior, truth))
        rows["copy_color"].append(scored({k: color for k in enc}, truth))
        rows["independent_noise"].append(scored(
            {k: v if k == "color" else torch.rand(v.shape, generator=g) for k, v in enc.items()}, truth))
    return {k: mean_and_sem(v) for k, v in rows.items()}


@lru_cache(maxsize=2)
def prior_maps(count: int = PRIOR_SCENES, size: int = IMAGE_SIZE) -> dict[str, torch.Tensor]:
    """Per-pixel mean of each map ``[H, W, 3]`` over ``count`` scenes of the stage-2 training stream
    (the normal map's mean renormalised to unit vectors). Cached: read it, do not modify it."""
    scenes = stream_scenes(STAGE2_DATA_SEED, count, size)
    encoded = [r.encode() for r in scenes]
    mean = {k: torch.from_numpy(np.mean([e[k] for e in encoded], axis=0)) for k in encoded[0]}
    mean["normal"] = renormalize_normals(mean["normal"][None])[0][0]
    return mean


def random_normal_deviation(shape: tuple[int, int], seed: int = 0) -> float:
    """Mean unit-length deviation (as :func:`lumix_core.conventions.renormalize_normals`
    measures it) of a normal map of uniform noise in [0, 1]: what noise scores (~0.22)."""
    g = torch.Generator().manual_seed(seed)
    _, deviation = renormalize_normals(torch.rand((1, *shape, 3), generator=g))
    return float(deviation.mean())


__all__ = ["PRIOR_SCENES", "reference_scores", "prior_maps", "random_normal_deviation"]

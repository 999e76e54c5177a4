"""Scoring a toy model on held-out scenes: ``python -m lumix_core.toy.evaluate [--weights DIR]``.

Two protocols, because a caption does not pin down a scene (where exactly the box stands,
which way the floor's stripes run), so maps generated from a caption cannot be compared
pixel by pixel with the render the caption came from:

* **decomposition** (:func:`evaluate_decomposition`): the held-out render's color image is
  pinned in the color slot (clean, t = 0, never updated -- the release's photo
  decomposition, guidance 1, no negative pass) and the other maps are sampled **with the
  empty caption**, as a user decomposing a photo has none. Scored against that render's
  ground truth (:func:`lumix_core.world.metrics.evaluate_maps`): normal angular error, depth
  AbsRel after a scale/shift fit, albedo and irradiance si-MSE in linear light; plus
  ``reads_photo_*``: the fraction of scenes whose predicted depth / normals are closer to
  their own truth than to the next scene's (a model that ignores its photo scores ~0.5).
* **generation** (:func:`evaluate_generation`): all five maps from the held-out caption
  alone, scored by :func:`lumix_core.world.metrics.map_coherence` (does albedo x irradiance give
  the color, do the depth's slopes give the normals?) -- no ground truth exists for them.
  :func:`caption_following` checks that the maps obey the words: the named object colour
  must dominate the albedo, the object must read as the named sphere or box
  (:mod:`lumix_core.toy.shape_check`), and "light from the left" must brighten the left half
  of the irradiance against "light from the right" with the same seed.
  :func:`caption_following_of_truth` scores the world's own truth on the same checks, so
  the table shows how much of each target this world allows at all.

:func:`reference_scores` gives the scale: the true maps, the true maps through the toy VAE,
the trivial guesses (camera-facing normals, flat depth, color as albedo, flat or luminance
irradiance), and the two cheap ways to look coherent (color copied into every map, one
noise per map). Held-out scenes come from their own seed stream (:data:`EVAL_DATA_SEED`),
disjoint from the stage-1 (seed 1) and stage-2 (seed 2) training streams.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..conventions import FinishedMap, renormalize_normals
from ..io.files import write_text_atomically
from ..world.dataset import scene_seed
from ..world.metrics import evaluate_maps, map_coherence
from ..world.render import RenderResult, render
from ..world.scene import FLOOR_COLORS, PALETTE, SceneSpec, main_light_word, mirror_main_light, sample_scene
from . import vae
from .backbone import IMAGE_SIZE, SAMPLE_STEPS, TRUE_CFG
from .model import WEIGHTS_DIR, ToyLumiX
from .shape_check import SHAPES, nearest_palette, recognised_shape
from .text import ToyTextEncoder

#: Seed stream of the held-out scenes (stage 1 trains on stream 1, stage 2 on stream 2).
EVAL_DATA_SEED = 3
GT_METRICS = ("normal_angular_error_deg", "depth_abs_rel", "albedo_si_mse", "irradiance_si_mse")
COHERENCE_METRICS = ("recompose_error", "depth_normal_error_deg")
#: Object colours of the colour-following test: the palette minus the neutral floor colours.
SATURATED_COLORS = tuple(c for c in PALETTE if c not in FLOOR_COLORS)
#: "Visibly brighter": the left-half irradiance difference, in 8-bit steps, of the light test.
VISIBLE_STEP = 5.0 / 255.0

#: The issue's targets (``python -m lumix_core.toy.evaluate`` prints each against them).
TARGETS = {
    "normal_angular_error_deg": ("<=", 12.0),
    "depth_abs_rel": ("<=", 0.05),
    "reads_photo_depth": (">=", 0.9),
    "reads_photo_normal": (">=", 0.9),
    "color_following": (">=", 0.8),
    #: The issue asks for "recognisable spheres and boxes in the contact sheet"; this is its
    #: measured stand-in (:mod:`lumix_core.toy.shape_check`), held to the colour check's bar.
    "shape_following": (">=", 0.8),
    "light_following": (">=", 0.8),
}


def held_out_scenes(count: int, size: int = IMAGE_SIZE, data_seed: int = EVAL_DATA_SEED) -> list[RenderResult]:
    return [render(sample_scene(scene_seed(data_seed, i)), size) for i in range(count)]


def one_object_scenes(scan: int) -> list[RenderResult]:
    """The scenes among the first ``scan`` held-out ones with a single flat object of a saturated
    colour: the ones whose object the shape check can find by its colour alone."""
    found = []
    for r in held_out_scenes(scan):
        objects = r.spec.objects
        material = objects[0].material
        if len(objects) == 1 and material.kind == "flat" and material.colors[0] in SATURATED_COLORS:
            found.append(r)
    return found


def truth_of(result: RenderResult) -> dict[str, np.ndarray]:
    """The raw buffers :func:`lumix_core.world.metrics.evaluate_maps` scores against."""
    return {"depth": result.depth, "normal": result.normal, "albedo": result.albedo,
            "irradiance": result.irradiance, "hit": result.hit}


def mean_and_sem(rows: Sequence[dict[str, float]]) -> dict[str, float]:
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


def _color_images(scenes: Sequence[RenderResult]) -> torch.Tensor:
    return torch.from_numpy(np.stack([r.encode(["color"])["color"] for r in scenes]))


@dataclass(frozen=True)
class EvalSettings:
    scenes: int = 64
    seed: int = 0
    steps: int = SAMPLE_STEPS
    true_cfg: float = TRUE_CFG
    batch: int = 8


def reads_photo(rows: list[dict[str, float]], predictions: list[dict[str, torch.Tensor]],
                scenes: Sequence[RenderResult]) -> None:
    """Add ``reads_photo_depth`` / ``reads_photo_normal`` (1 or 0) to each scene's row: is the
    prediction closer to its own truth than to the next scene's? Chance is ~0.5."""
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
                              color=_color_images(chunk))
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


#: The light-following prompt, completed with "the left" or "the right".
LIGHT_PROMPT = "a white sphere and a gray box on a gray floor, light from "
#: Sampling seed of the light check's seed ``i``: LIGHT_SEED_OFFSET + i (+ the settings' seed).
LIGHT_SEED_OFFSET = 2000


def dominant_color(albedo: torch.Tensor, colors: Sequence[str] = tuple(PALETTE)) -> Optional[str]:
    """The most frequent non-floor colour of an sRGB albedo ``[H, W, 3]``: every pixel is
    assigned its nearest palette colour, and the floor colours (neutral) are not counted.
    None if no pixel is nearest to a saturated colour."""
    names = list(colors)
    counts = np.bincount(nearest_palette(albedo, names).reshape(-1), minlength=len(names))
    for i, name in enumerate(names):
        if name in FLOOR_COLORS:
            counts[i] = 0
    return names[int(counts.argmax())] if int(counts.max()) > 0 else None


def color_prompts(shapes: Sequence[str] = SHAPES) -> list[tuple[str, str]]:
    """``(colour, prompt)`` for one object of each saturated colour and shape on a gray floor."""
    return [(c, f"a {c} {s} on a gray floor, light from above") for c in SATURATED_COLORS for s in shapes]


def prompt_shape(prompt: str) -> str:
    """The shape a prompt of :func:`color_prompts` names."""
    return next(s for s in SHAPES if f" {s} " in f" {prompt} ")


def caption_following(model: ToyLumiX, settings: EvalSettings, seeds: int = 16) -> dict[str, float]:
    """Do generated maps obey the caption's words? (Cheap to fool on its own -- a model could
    paint the whole albedo red -- so read it beside the coherence scores.)

    * ``color_following``: fraction of single-object prompts (each saturated colour, sphere
      and box, two seeds) whose generated albedo's dominant colour (:func:`dominant_color`) is
      the named one.
    * ``shape_following``: of the same generations, the fraction whose object of the named
      colour reads as the named shape (:func:`lumix_core.toy.shape_check.recognised_shape`: do
      its normals fit a sphere or three flat faces better?). Half the prompts name a sphere,
      half a box, so a model that draws one blob for everything scores 0.5.
    * ``light_following``: fraction of seeds for which "light from the left" makes the left
      half of the irradiance brighter than "light from the right" (same seed, same objects) by
      at least :data:`VISIBLE_STEP`; ``light_left_minus_right`` is the mean difference (8-bit).
    """
    checks = [c for index in range(2) for c in object_checks(model, settings, index)]
    d = np.array([light_left_minus_right(model, settings, i) for i in range(seeds)])
    return {"color_following": float(np.mean([c["color"] for c in checks])), "color_prompts": float(len(checks)),
            "shape_following": float(np.mean([c["shape"] for c in checks])),
            "light_following": float(np.mean(d >= VISIBLE_STEP)), "light_left_minus_right": float(d.mean() * 255),
            "light_left_minus_right_sem": float(d.std(ddof=1) / np.sqrt(len(d)) * 255)}


def object_checks(model: ToyLumiX, settings: EvalSettings, index: int) -> list[dict[str, float]]:
    """For each prompt of :func:`color_prompts`, generated with the colour check's seed ``index``:
    ``color`` 1.0 if the albedo's dominant colour (:func:`dominant_color`) is the named one, and
    ``shape`` 1.0 if the named colour's object reads as the named shape
    (:func:`lumix_core.toy.shape_check.recognised_shape`), else 0.0."""
    checks = []
    prompts = color_prompts()
    for start in range(0, len(prompts), settings.batch):
        chunk = prompts[start: start + settings.batch]
        maps = model.generate([p for _, p in chunk], seed=settings.seed + 1000 * index + start,
                              steps=settings.steps, true_cfg=settings.true_cfg)
        for n, (color, prompt) in enumerate(chunk):
            albedo, normal = maps["albedo"].image[n], maps["normal"].image[n]
            checks.append({"color": float(dominant_color(albedo) == color),
                           "shape": float(recognised_shape(albedo, normal, color) == prompt_shape(prompt))})
    return checks


def light_left_minus_right(model: ToyLumiX, settings: EvalSettings, index: int) -> float:
    """Left-half mean of the irradiance generated for "light from the left" minus that for "light
    from the right" (the check's seed ``index``, the same for both; in [0, 1] units): what the
    light-following check thresholds."""
    seed = settings.seed + LIGHT_SEED_OFFSET + index
    halves = [left_half_mean(model.generate([LIGHT_PROMPT + side], seed=seed, steps=settings.steps,
                                            true_cfg=settings.true_cfg)["irradiance"].image[0])
              for side in ("the left", "the right")]
    return halves[0] - halves[1]


def left_half_mean(image: np.ndarray | torch.Tensor) -> float:
    """Mean of the left half (columns) of an image ``[H, W, C]``: what the light-following checks compare."""
    return float(image[:, : image.shape[1] // 2].mean())


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


def caption_following_of_truth(scenes: Sequence[RenderResult], seeds: int = 16) -> dict[str, float]:
    """:func:`caption_following`'s scores on the world's own ground truth -- the check that
    the targets are reachable at all in this world (a metric the truth fails measures nothing):

    * ``color_following`` / ``shape_following``: of the held-out ``scenes``, those with one
      object of one saturated colour (what a prompt of :func:`color_prompts` describes): is the
      object's colour the dominant one of the true albedo (:func:`dominant_color`), and does the
      object read as its own shape (:func:`lumix_core.toy.shape_check.recognised_shape`)?
    * ``light_following``: the first ``seeds`` held-out scenes whose main light comes from the
      left or right, each rendered again with that light mirrored (:func:`mirror_main_light`):
      does "from the left" make the left half of the true irradiance brighter than "from the
      right" by at least :data:`VISIBLE_STEP`? ``light_left_minus_right``: the mean (8-bit).
    """
    colors, shapes = [], []
    for r in scenes:
        objects = r.spec.objects
        material = objects[0].material if len(objects) == 1 else None
        if material is not None and material.kind == "flat" and material.colors[0] in SATURATED_COLORS:
            maps = r.encode()
            colors.append(float(dominant_color(torch.from_numpy(maps["albedo"])) == material.colors[0]))
            shapes.append(float(recognised_shape(maps["albedo"], maps["normal"], material.colors[0])
                                == objects[0].shape))
    diffs = [left_half_mean(left) - left_half_mean(right) for left, right in mirrored_light_pairs(seeds)]
    d = np.array(diffs)
    return {"color_following": float(np.mean(colors)), "color_prompts": float(len(colors)),
            "shape_following": float(np.mean(shapes)),
            "light_following": float(np.mean(d >= VISIBLE_STEP)), "light_left_minus_right": float(d.mean() * 255),
            "light_left_minus_right_sem": float(d.std(ddof=1) / np.sqrt(len(d)) * 255)}


def training_evaluator(text: ToyTextEncoder, scenes: int = 16, steps: int = 8,
                       settings: EvalSettings = EvalSettings(), *, one_step: bool = False):
    """The trainer's ``evaluator`` (:data:`lumix_core.train.fit.Evaluator`) for toy runs: the
    decomposition scores of ``scenes`` held-out scenes at ``steps`` Euler steps (fewer than
    the final evaluation's, so a run can afford one every few hundred steps); ``one_step``:
    of a one-step adapter, decomposing in its one call."""
    held = held_out_scenes(scenes)
    keep = GT_METRICS + ("reads_photo_depth", "reads_photo_normal")
    quick = replace(settings, steps=steps)

    def evaluate(backbone, step: int) -> dict[str, float]:
        scores = evaluate_decomposition(ToyLumiX.live(backbone, text, one_step=one_step), held, quick,
                                        coherence=False)
        return {f"decomposition_{k}": scores[k] for k in keep}

    return evaluate


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


#: Training scenes averaged into the ``prior`` reference (from the stage-2 seed stream).
PRIOR_SCENES = 64


@lru_cache(maxsize=2)
def prior_maps(count: int = PRIOR_SCENES, size: int = IMAGE_SIZE) -> dict[str, torch.Tensor]:
    """Per-pixel mean of each map ``[H, W, 3]`` over ``count`` scenes of the stage-2 training stream
    (the normal map's mean renormalised to unit vectors). Cached: read it, do not modify it."""
    from .recipe import Stage2Settings

    scenes = [render(sample_scene(scene_seed(Stage2Settings().data_seed, i)), size) for i in range(count)]
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


def evaluate_all(model: ToyLumiX, settings: EvalSettings, *, following: bool = True) -> dict[str, dict[str, float]]:
    """Every protocol on ``settings.scenes`` held-out scenes, plus the references. A one-step
    adapter only decomposes: its generation scores are left out (empty)."""
    scenes = held_out_scenes(settings.scenes)
    out = {"decomposition": evaluate_decomposition(model, scenes, settings),
           "generation": {} if model.one_step else evaluate_generation(model, scenes, settings),
           **reference_scores(scenes, settings.seed)}
    if following and not model.one_step:
        out["caption_following"] = caption_following(model, settings)
        out["caption_following_of_truth"] = caption_following_of_truth(scenes)
    return out


def steps_table(model: ToyLumiX, scenes: Sequence[RenderResult], steps: Sequence[int],
                settings: EvalSettings = EvalSettings()) -> list[dict[str, float]]:
    """Decomposition scores for each Euler step count (one row each), with the sampling wall
    time per photo of one batch of ``settings.batch`` photos (decode and finishing included,
    scoring not)."""
    rows = []
    timing = _color_images(scenes[: settings.batch])
    for n in steps:
        scores = evaluate_decomposition(model, scenes, replace(settings, steps=int(n)), coherence=False)
        t = time.perf_counter()
        model.generate([""] * len(timing), seed=settings.seed, steps=int(n), true_cfg=1.0, color=timing)
        rows.append({"steps": float(n), "seconds_per_photo": (time.perf_counter() - t) / len(timing), **scores})
    return rows


def steps_markdown(rows: Sequence[dict[str, float]], label: str = "") -> str:
    keys = GT_METRICS + ("reads_photo_depth", "reads_photo_normal")
    lines = ["| model | steps | " + " | ".join(keys) + " | s / photo |", "|---" * (len(keys) + 3) + "|"]
    for r in rows:
        lines.append(f"| {label} | {int(r['steps'])} | " + " | ".join(_fmt(r, k) for k in keys)
                     + f" | {r['seconds_per_photo']:.3f} |")
    return "\n".join(lines)


def _fmt(scores: dict[str, float], key: str) -> str:
    if key not in scores:
        return "–"
    sem = scores.get(f"{key}_sem")
    digits = 4 if abs(scores[key]) < 0.1 else 3 if abs(scores[key]) < 10 else 1
    return f"{scores[key]:.{digits}f}" + (f" ± {sem:.{digits}f}" if sem and np.isfinite(sem) else "")


def summary_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table: model vs references vs targets, one row per score."""
    dec, gen = results["decomposition"], results["generation"]
    refs = ("ground_truth_vae", "trivial", "trivial_flat_irradiance", "prior", "copy_color", "independent_noise")
    lines = ["| score | model | " + " | ".join(refs) + " | target |", "|---" * (len(refs) + 3) + "|"]
    for key in GT_METRICS + ("reads_photo_depth", "reads_photo_normal") + COHERENCE_METRICS:
        op, value = TARGETS.get(key, ("", None))
        target = f"{op} {value}" if value is not None else ""
        if key == "albedo_si_mse":
            target = f"<= {results['trivial'][key] / 2:.4f} (½ trivial)"
        lines.append(f"| decomposition {key} | {_fmt(dec, key)} | " + " | ".join(_fmt(results[r], key) for r in refs)
                     + f" | {target} |")
    for key in COHERENCE_METRICS:
        lines.append(f"| generation {key} | {_fmt(gen, key)} | " + " | ".join("" for _ in refs) + " | |")
    follow = results.get("caption_following", {})
    for key in ("color_following", "shape_following", "light_following", "light_left_minus_right"):
        if key in follow:
            op, value = TARGETS.get(key, ("", None))
            target = f"{op} {value}" if value is not None else ""
            lines.append(f"| generation {key} | {_fmt(follow, key)} | " + " | ".join("" for _ in refs)
                         + f" | {target} |")
    truth = results.get("caption_following_of_truth")
    if truth:
        lines += ["", f"The world's own truth on the caption-following checks (caption_following_of_truth): colour "
                      f"{truth['color_following']:.2f} and shape {truth['shape_following']:.2f} of "
                      f"{truth['color_prompts']:.0f} one-object scenes, light "
                      f"{truth['light_following']:.2f} (mean left - right {truth['light_left_minus_right']:+.1f}/255, "
                      "main light mirrored)."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    d = EvalSettings()
    ap = argparse.ArgumentParser(prog="python -m lumix_core.toy.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(WEIGHTS_DIR), help="toy model folder (default: the shipped one)")
    ap.add_argument("--adapter", help="score this adapter file on the folder's backbone instead of its adapter "
                                      "(e.g. the one-step one: lumix_core/toy/weights/adapter_one_step.safetensors)")
    ap.add_argument("--steps-sweep", metavar="N,N,...",
                    help="instead of the full evaluation: decomposition scores and time per photo at each of "
                         "these step counts (e.g. 1,2,4,8,24,50)")
    ap.add_argument("--scenes", type=int, default=d.scenes, help="held-out scenes (default %(default)s)")
    ap.add_argument("--steps", type=int, default=d.steps, help="Euler steps (default %(default)s)")
    ap.add_argument("--no-following", action="store_true", help="skip the caption-following test (faster)")
    ap.add_argument("--json", help="also write every score to this JSON file (refuses to overwrite)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")
    args = ap.parse_args(argv)
    if args.scenes < 2 or args.steps < 1 or args.threads < 1:
        print("evaluate: --scenes must be >= 2, --steps and --threads >= 1", file=sys.stderr)
        return 2
    parts = args.steps_sweep.split(",") if args.steps_sweep else []
    sweep = [int(n) for n in parts if n.strip().isdigit()]
    if len(sweep) != len(parts) or any(n < 1 for n in sweep):
        print(f"evaluate: --steps-sweep takes step counts >= 1 separated by commas, got '{args.steps_sweep}'",
              file=sys.stderr)
        return 2
    if args.json and Path(args.json).exists():
        print(f"evaluate: {args.json} exists; choose a new --json path (nothing is overwritten)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    settings = replace(d, scenes=args.scenes, steps=args.steps)
    t = time.perf_counter()
    model = ToyLumiX.load(args.weights, adapter=args.adapter)
    if sweep:
        rows = steps_table(model, held_out_scenes(settings.scenes), sweep, settings)
        print(steps_markdown(rows, "one-step adapter" if model.one_step else "multi-step adapter"))
        print(f"\n{settings.scenes} held-out scenes, decomposition without caption, {time.perf_counter() - t:.0f} s")
        if args.json:
            write_text_atomically(Path(args.json), json.dumps({"settings": asdict(settings), "steps": rows},
                                                              indent=1) + "\n")
        return 0
    results = evaluate_all(model, settings, following=not args.no_following)
    print(summary_table(results))
    sampling = "one model call (one-step adapter)" if model.one_step else f"{settings.steps} steps"
    print(f"\n{settings.scenes} held-out scenes (seed stream {EVAL_DATA_SEED}), {sampling}, "
          f"{time.perf_counter() - t:.0f} s; model: {args.weights}"
          + (f", adapter {args.adapter}" if args.adapter else ""))
    if args.json:
        write_text_atomically(Path(args.json), json.dumps({"settings": asdict(settings), **results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["EVAL_DATA_SEED", "GT_METRICS", "COHERENCE_METRICS", "TARGETS", "LIGHT_PROMPT", "EvalSettings",
           "held_out_scenes", "one_object_scenes", "truth_of", "mean_and_sem", "evaluate_decomposition", "evaluate_generation",
           "caption_following", "object_checks", "prompt_shape", "caption_following_of_truth", "mirrored_light_pairs", "left_half_mean", "dominant_color",
           "reference_scores", "prior_maps", "steps_table", "random_normal_deviation", "evaluate_all", "summary_table"]

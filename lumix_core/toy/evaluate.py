"""Scoring a toy model on held-out scenes: ``python -m lumix_core.toy.evaluate [--weights DIR]``.

Two protocols, because a caption does not pin down a scene (where exactly the box stands,
which way the floor's stripes run), so maps generated from a caption cannot be compared
pixel by pixel with the render the caption came from:

* **decomposition** (:func:`lumix_core.toy.scoring.map_scores.evaluate_decomposition`): the
  held-out render's color image pinned, the other maps sampled with the empty caption and
  scored against that render's ground truth, plus ``reads_photo_*``: the fraction of scenes
  whose predicted depth / normals are closer to their own truth than to the next scene's (a
  model that ignores its photo scores ~0.5).
* **generation** (:func:`lumix_core.toy.scoring.map_scores.evaluate_generation`): all five
  maps from the held-out caption alone, scored by their physical coherence -- no ground truth
  exists for them. :mod:`lumix_core.toy.scoring.caption_checks` checks that the maps obey the
  words: the named object colour must dominate the albedo, the object must read as the named
  sphere or box (:mod:`lumix_core.toy.shape_check`), and "light from the left" must brighten
  the left half of the irradiance against "light from the right" with the same seed; the
  world's own truth is scored on the same checks, so the table shows how much of each target
  this world allows at all.

:mod:`lumix_core.toy.scoring.references` gives the scale (the true maps, through the toy VAE
too, the trivial guesses, the training prior, and the cheap ways to look coherent). Held-out
scenes come from their own seed stream (:data:`lumix_core.toy.seed_streams.EVAL_DATA_SEED`),
disjoint from the stage-1 and stage-2 training streams. This module runs them all
(:func:`evaluate_all`) and prints the scores against :data:`TARGETS` (:func:`summary_table`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..io.files import write_text_atomically
from .model import WEIGHTS_DIR, ToyLumiX
from .scoring.caption_checks import caption_following, caption_following_of_truth
from .scoring.held_out import EvalSettings, held_out_scenes
from .scoring.map_scores import (
    COHERENCE_METRICS,
    DECOMPOSITION_SCORES,
    evaluate_decomposition,
    evaluate_generation,
    format_score,
)
from .scoring.references import reference_scores
from .scoring.steps_sweep import steps_markdown, steps_table
from .seed_streams import EVAL_DATA_SEED

#: The toy model's targets (``python -m lumix_core.toy.evaluate`` prints each score against them).
TARGETS = {
    "normal_angular_error_deg": ("<=", 12.0),
    "depth_abs_rel": ("<=", 0.05),
    "reads_photo_depth": (">=", 0.9),
    "reads_photo_normal": (">=", 0.9),
    "color_following": (">=", 0.8),
    #: "Recognisable spheres and boxes in the contact sheet", measured
    #: (:mod:`lumix_core.toy.shape_check`) and held to the colour check's bar.
    "shape_following": (">=", 0.8),
    "light_following": (">=", 0.8),
}


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


def summary_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table: model vs references vs targets, one row per score."""
    dec, gen = results["decomposition"], results["generation"]
    refs = ("ground_truth_vae", "trivial", "trivial_flat_irradiance", "prior", "copy_color", "independent_noise")
    lines = ["| score | model | " + " | ".join(refs) + " | target |", "|---" * (len(refs) + 3) + "|"]
    for key in DECOMPOSITION_SCORES + COHERENCE_METRICS:
        op, value = TARGETS.get(key, ("", None))
        target = f"{op} {value}" if value is not None else ""
        if key == "albedo_si_mse":
            target = f"<= {results['trivial'][key] / 2:.4f} (½ trivial)"
        lines.append(f"| decomposition {key} | {format_score(dec, key)} | "
                     + " | ".join(format_score(results[r], key) for r in refs) + f" | {target} |")
    for key in COHERENCE_METRICS:
        lines.append(f"| generation {key} | {format_score(gen, key)} | " + " | ".join("" for _ in refs) + " | |")
    follow = results.get("caption_following", {})
    for key in ("color_following", "shape_following", "light_following", "light_left_minus_right"):
        if key in follow:
            op, value = TARGETS.get(key, ("", None))
            target = f"{op} {value}" if value is not None else ""
            lines.append(f"| generation {key} | {format_score(follow, key)} | " + " | ".join("" for _ in refs)
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


__all__ = ["TARGETS", "evaluate_all", "summary_table", "main"]

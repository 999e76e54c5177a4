"""Does an fp8-stored frozen backbone hurt the adapter trained on it? The toy's one-step recipe, shortened.

    python experiments/fp8_base/run.py --cache RUN/cache --out DIR [--steps 1500] [--seeds 0,1] [--bases bf16,fp8]

Trains :data:`lumix_core.toy.recipe.ONE_STEP_SETTINGS` for ``--steps`` steps with ``lumix-train fit
--base-dtype bf16`` (on a CPU: the toy's float32 weights) and ``--base-dtype fp8`` (the same backbone stored as
float8_e4m3fn with one scale per weight, cast to float32 layer by layer), once per seed, each into
``DIR/<base>_seed<seed>/``; then scores every adapter on ``--scenes`` held-out decompositions on the shipped
float32 backbone (what a user runs the adapter on) and writes ``DIR/results.csv`` and a markdown table: mean
over seeds, the seeds' standard error, and the fp8 - bf16 difference against it. A run whose adapter exists is
scored, not retrained, so runs can be split over processes with ``--bases`` / ``--seeds``. ``RUN/cache``: a
reproduce run's cache (``python -m lumix_core.toy.reproduce --out RUN ...``), or the recipe's 3200 scenes made
with ``lumix_core.toy.recipe.write_maps_dataset`` + ``prepare_cache``.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

from lumix_core.io.files import write_text_atomically
from lumix_core.toy.model import BACKBONE_FILE, WEIGHTS_DIR, ToyLumiX
from lumix_core.toy.recipe import ONE_STEP_SETTINGS, fit_config
from lumix_core.toy.scoring.held_out import EvalSettings, held_out_scenes
from lumix_core.toy.scoring.map_scores import DECOMPOSITION_SCORES, evaluate_decomposition
from lumix_core.toy.vae import ToyVAEDecoder
from lumix_core.train.fit import FINAL_ADAPTER, run_fit

KEYS = DECOMPOSITION_SCORES


def train(cache: str, run: Path, base: str, seed: int, steps: int, weights: Path) -> Path:
    adapter = run / FINAL_ADAPTER
    if not adapter.is_file():
        settings = replace(ONE_STEP_SETTINGS, steps=steps, seed=seed, evaluate_every=steps)
        config = replace(fit_config(cache, weights / BACKBONE_FILE, run, settings), base_dtype=base)
        run_fit(config, decoder=ToyVAEDecoder())
    return adapter


def table(rows: list[dict]) -> str:
    bases = sorted({r["base"] for r in rows})
    lines = ["| score | " + " | ".join(f"{b} (mean ± s.e. over seeds)" for b in bases) + " | fp8 - bf16 |",
             "|---" * (len(bases) + 2) + "|"]
    for key in KEYS:
        cells, means = [], {}
        for b in bases:
            values = [r[key] for r in rows if r["base"] == b]
            means[b] = statistics.fmean(values)
            sem = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
            cells.append(f"{means[b]:.4g} ± {sem:.2g} ({', '.join(f'{v:.4g}' for v in values)})")
        diff = f"{means['fp8'] - means['bf16']:+.3g}" if {"fp8", "bf16"} <= set(means) else ""
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {diff} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python experiments/fp8_base/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="the toy's prepared stage-2 cache")
    ap.add_argument("--out", required=True, help="folder of the runs, results.csv and results.md")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--bases", default="bf16,fp8")
    ap.add_argument("--scenes", type=int, default=64, help="held-out scenes scored (default %(default)s)")
    ap.add_argument("--weights", default=str(WEIGHTS_DIR), help="folder with the stage-1 backbone + text encoder")
    ap.add_argument("--train-only", action="store_true", help="train the selected runs, score nothing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out, weights = Path(args.out), Path(args.weights)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [(b, s) for b in args.bases.split(",") for s in seeds]
    adapters = {(b, s): train(args.cache, out / f"{b}_seed{s}", b, s, args.steps, weights) for b, s in runs}
    if args.train_only:
        return 0
    settings = replace(EvalSettings(), scenes=args.scenes)
    scenes = held_out_scenes(settings.scenes)
    rows = []
    for (base, seed), adapter in adapters.items():
        scores = evaluate_decomposition(ToyLumiX.load(weights, adapter=adapter), scenes, settings)
        rows.append({"base": base, "seed": seed, **{k: scores[k] for k in KEYS}})
        print(base, seed, {k: round(scores[k], 5) for k in KEYS}, flush=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["base", "seed", *KEYS])
        writer.writeheader()
        writer.writerows(rows)
    text = table(rows)
    write_text_atomically(out / "results.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

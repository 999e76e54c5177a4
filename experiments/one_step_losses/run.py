"""Which loss space suits the one-step objective on the toy: latent, pixel or both?

    python experiments/one_step_losses/run.py --cache RUN/cache --out DIR [--steps 1000] [--losses latent,pixel,both]

Trains the toy's one-step recipe (:data:`lumix_core.toy.recipe.ONE_STEP_SETTINGS`: a fresh
adapter, decompositions without caption) at rank ``--rank`` (24, as README.md beside this script
was measured) and without the detail weight, with ``lumix-train fit --objective one-step`` once
per loss space on the frozen shipped backbone, each into ``DIR/<loss>/``, and prints the held-out
decomposition scores every ``--every`` steps (16 held-out scenes, the trainer's evaluator) as a
markdown table. ``RUN/cache`` is a reproduce run's cache (``python -m lumix_core.toy.reproduce
--out RUN ...``). Runs can be split over processes with ``--losses``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from lumix_core.toy.model import BACKBONE_FILE, TEXT_FILE, WEIGHTS_DIR
from lumix_core.toy.recipe import ONE_STEP_SETTINGS, fit_adapter
from lumix_core.toy.scoring.map_scores import DECOMPOSITION_SCORES
from lumix_core.toy.text import ToyTextEncoder
from lumix_core.train.curves import EVALUATIONS, read_jsonl

KEYS = DECOMPOSITION_SCORES


def main() -> int:
    ap = argparse.ArgumentParser(prog="python experiments/one_step_losses/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--losses", default="latent,pixel,both")
    ap.add_argument("--rank", type=int, default=24, help="adapter rank (default %(default)s, as measured; the recipe's "
                    f"is {ONE_STEP_SETTINGS.rank})")
    ap.add_argument("--weights", default=str(WEIGHTS_DIR), help="folder with the stage-1 backbone + text encoder")
    args = ap.parse_args()
    torch.set_num_threads(1)
    text = ToyTextEncoder.load(Path(args.weights) / TEXT_FILE)
    lines = ["| loss | step | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 2) + "|"]
    for loss in args.losses.split(","):
        run = Path(args.out) / loss
        if not (run / "adapter.safetensors").is_file():
            # Without the detail weight, as README.md's table was measured: the latent space has no
            # pixel term for it to weigh, so with it the three spaces would differ in more than the loss.
            settings = replace(ONE_STEP_SETTINGS, steps=args.steps, evaluate_every=args.every, one_step_loss=loss,
                               rank=args.rank, one_step_detail_weight=0.0)
            fit_adapter(args.cache, Path(args.weights) / BACKBONE_FILE, run, settings, text=text)
        for row in read_jsonl(run / EVALUATIONS):
            lines.append(f"| {loss} | {row['step']} | "
                         + " | ".join(f"{row['decomposition_' + k]:.4g}" for k in KEYS) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

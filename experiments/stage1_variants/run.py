"""Does a wider or longer stage 1 draw recognisable shapes? (~1.5 h per variant on one core)

    python experiments/stage1_variants/run.py --out DIR [--hidden 192 --heads 3] [--stage1-steps 12000]
                                             [--data STAGE2_DATA] [--threads 1]

One variant of the toy recipe: stage 1 (:func:`lumix_core.toy.recipe.train_backbone`) with the given
width and steps, then the recipe's multi-step stage 2 on it (:class:`~lumix_core.toy.recipe.Stage2Settings`
defaults, the trainer's ``fit``), then the caption checks of
:func:`lumix_core.toy.scoring.caption_checks.caption_following` (colour, shape, light) on the result.
``--data`` reuses the stage-2 scenes of a reproduce run
(``RUN/data``; otherwise they are rendered into ``DIR/data``). Writes ``DIR/stage1``, ``DIR/cache``,
``DIR/stage2``, ``DIR/weights`` (a model folder ``lumix_core.toy.evaluate --weights`` reads, adapter in
float16 as reproduce ships it) and ``DIR/following.json``. The figures it gave:
experiments/stage1_variants/README.md. ``--stage1-scenes``, ``--stage2-scenes``, ``--stage2-steps`` shrink it
for a smoke run.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from lumix_core.toy.backbone import toy_config
from lumix_core.toy.model import BACKBONE_FILE, TEXT_FILE, ToyLumiX
from lumix_core.toy.recipe import Stage2Settings, fit_adapter, prepare_cache, train_backbone, write_maps_dataset
from lumix_core.toy.reproduce import _progress, assemble_weights, check_empty_folder
from lumix_core.toy.scoring.caption_checks import caption_following
from lumix_core.toy.scoring.held_out import EvalSettings
from lumix_core.toy.stage1 import Stage1Settings
from lumix_core.toy.text import ToyTextEncoder


def main() -> None:
    d1, d2 = Stage1Settings(), Stage2Settings()
    ap = argparse.ArgumentParser(prog="python experiments/stage1_variants/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="new or empty folder")
    ap.add_argument("--hidden", type=int, default=128, help="backbone width (shipped: %(default)s)")
    ap.add_argument("--heads", type=int, default=2, help="attention heads (shipped: %(default)s)")
    ap.add_argument("--stage1-steps", type=int, default=d1.steps)
    ap.add_argument("--stage1-scenes", type=int, default=d1.scenes)
    ap.add_argument("--stage2-scenes", type=int, default=d2.scenes)
    ap.add_argument("--stage2-steps", type=int, default=d2.steps)
    ap.add_argument("--data", help="stage-2 scenes already written (a reproduce run's RUN/data)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    check_empty_folder(out)
    times = {}
    t = time.perf_counter()
    s1 = replace(d1, steps=args.stage1_steps, scenes=args.stage1_scenes)
    train_backbone(out / "stage1", s1, config=toy_config(hidden_size=args.hidden, num_heads=args.heads),
                   on_step=_progress("stage 1", 200, s1.steps))
    times["stage1_s"] = time.perf_counter() - t
    data = Path(args.data) if args.data else write_maps_dataset(out / "data", args.stage2_scenes, d2.data_seed)
    t = time.perf_counter()
    cache = prepare_cache(data, out / "cache", ToyTextEncoder.load(out / "stage1" / TEXT_FILE))
    s2 = replace(d2, steps=args.stage2_steps, scenes=args.stage2_scenes)
    fit_adapter(cache, out / "stage1" / BACKBONE_FILE, out / "stage2", s2, on_step=_progress("stage 2", 100, s2.steps))
    times["stage2_s"] = time.perf_counter() - t
    variant = {"hidden": args.hidden, "heads": args.heads, "stage1_steps": s1.steps, **times}
    weights = assemble_weights(out / "weights", out / "stage1", out / "stage2" / "adapter.safetensors", None,
                               {"experiment": "experiments/stage1_variants/run.py", **variant})
    result = {**variant, **caption_following(ToyLumiX.load(weights), EvalSettings())}
    (out / "following.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

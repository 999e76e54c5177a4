"""Reproduce the shipped toy model from nothing: ``python -m lumix_core.toy.reproduce --out DIR``.

Stage 1 (text -> color backbone + text encoder), the stage-2 dataset in the release layout,
the trainer's ``prepare`` (toy encoders at its Encoder boundary) and ``fit`` (Tensor LoRA +
QBA), then the one-step decomposition adapter (``fit --objective one-step`` on the same cache)
and a held-out evaluation of both. Writes::

    DIR/stage1/   backbone.safetensors, text_encoder.safetensors
    DIR/data/     release-layout dataset (+ ground_truth/*.npz)
    DIR/cache/    the trainer's cache
    DIR/stage2/   the trainer's run folder (adapter.safetensors, metrics.jsonl, validation/)
    DIR/one_step/ the one-step run folder (same files)
    DIR/weights/  the model folder as shipped in lumix_core/toy/weights (+ model_card.json);
                  adapters stored in float16 (half the size, computed in float32)
    DIR/eval.json, DIR/eval_one_step.json  held-out scores

Defaults are the shipped model's settings; the model card records the measured wall times of
each stage. Nothing here is run by CI.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..io.files import write_text_atomically
from ..model.checkpoint import inspect_adapter, load_adapter, save_adapter
from .evaluate import evaluate_all, summary_table
from .model import ADAPTER_FILE, BACKBONE_FILE, CARD_FILE, ONE_STEP_ADAPTER_FILE, TEXT_FILE, ToyLumiX
from .recipe import ONE_STEP_SETTINGS, Stage2Settings, fit_adapter, prepare_cache, train_backbone, write_maps_dataset
from .scoring.held_out import EvalSettings
from .stage1 import Stage1Settings
from .text import ToyTextEncoder

log = logging.getLogger("lumix.toy")


def _progress(label: str, every: int, total: int):
    def report(step: int, loss: float) -> None:
        if step % every == 0 or step == total:
            log.info("%s step %d/%d loss %.4f", label, step, total, loss)
    return report


def check_empty_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new --out (nothing is overwritten)")


def ship_adapter(src: Path, dst: Path) -> Path:
    """``src`` re-written as float16 with its metadata (the shipped folder must stay under 25 MB)."""
    return save_adapter(load_adapter(src), dst, extra_metadata=inspect_adapter(src).metadata, dtype=torch.float16)


def assemble_weights(target: Path, stage1: Path, adapter: Path, one_step: Optional[Path], card: dict) -> Path:
    """The weight files in one model folder (adapters as float16) and its model card."""
    target.mkdir(parents=True, exist_ok=False)
    for src in (stage1 / BACKBONE_FILE, stage1 / TEXT_FILE):
        shutil.copyfile(src, target / src.name)
    ship_adapter(adapter, target / ADAPTER_FILE)
    if one_step is not None:
        ship_adapter(one_step, target / ONE_STEP_ADAPTER_FILE)
    write_text_atomically(target / CARD_FILE, json.dumps(card, indent=1, sort_keys=True) + "\n")
    return target


def run(out: Path, stage1: Stage1Settings, stage2: Stage2Settings, evaluation: EvalSettings,
        reuse_stage1: Optional[Path] = None, one_step: Optional[Stage2Settings] = ONE_STEP_SETTINGS) -> dict:
    """All stages into ``out``; ``reuse_stage1``: a folder with a stage-1 backbone and text
    encoder made by this recipe (e.g. the shipped weights) to copy instead of retraining."""
    check_empty_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    if reuse_stage1 is not None:
        (out / "stage1").mkdir()
        for name in (BACKBONE_FILE, TEXT_FILE):
            shutil.copyfile(reuse_stage1 / name, out / "stage1" / name)
        log.info("stage 1: reused %s", reuse_stage1)
        stage1_loss = ToyLumiX.card(reuse_stage1).get("stage1_final_loss")
    else:
        log.info("stage 1: %d scenes, %d steps of %d", stage1.scenes, stage1.steps, stage1.batch_size)
        s1 = train_backbone(out / "stage1", stage1, on_step=_progress("stage 1", 100, stage1.steps))
        stage1_loss = sum(s1.losses[-50:]) / len(s1.losses[-50:])
    times["stage1_s"] = time.perf_counter() - t

    t = time.perf_counter()
    write_maps_dataset(out / "data", stage2.scenes, stage2.data_seed)
    text = ToyTextEncoder.load(out / "stage1" / TEXT_FILE)
    prepare_cache(out / "data", out / "cache", text)
    times["dataset_and_prepare_s"] = time.perf_counter() - t

    t = time.perf_counter()
    log.info("stage 2: %d scenes, %d steps of %d", stage2.scenes, stage2.steps, stage2.batch_size)
    fit = fit_adapter(out / "cache", out / "stage1" / BACKBONE_FILE, out / "stage2", stage2,
                      on_step=_progress("stage 2", 100, stage2.steps), text=text)
    times["stage2_s"] = time.perf_counter() - t

    fast = None
    if one_step is not None:
        t = time.perf_counter()
        log.info("one-step adapter: %d steps of %d", one_step.steps, one_step.batch_size)
        fast = fit_adapter(out / "cache", out / "stage1" / BACKBONE_FILE, out / "one_step", one_step,
                           on_step=_progress("one-step", 100, one_step.steps), text=text)
        times["one_step_s"] = time.perf_counter() - t

    t = time.perf_counter()
    model = ToyLumiX.load(out / "stage1", adapter=fit.adapter_path)
    scores = evaluate_all(model, evaluation)
    times["evaluation_s"] = time.perf_counter() - t
    one_step_scores = None
    if fast is not None:
        t = time.perf_counter()
        one_step_scores = evaluate_all(ToyLumiX.load(out / "stage1", adapter=fast.adapter_path), evaluation)
        write_text_atomically(out / "eval_one_step.json", json.dumps(one_step_scores, indent=1, sort_keys=True) + "\n")
        times["evaluation_one_step_s"] = time.perf_counter() - t
    times["total_s"] = sum(times.values())
    write_text_atomically(out / "eval.json", json.dumps(scores, indent=1, sort_keys=True) + "\n")

    card = {"what": "toy LumiX: text -> albedo, irradiance, color, depth, normal on the synthetic world",
            "made_by": "python -m lumix_core.toy.reproduce", "stage1": asdict(stage1), "stage2": asdict(stage2),
            "stage1_reused_from": str(reuse_stage1) if reuse_stage1 is not None else None,
            "stage1_final_loss": stage1_loss,
            "stage2_final_loss": sum(fit.losses[-50:]) / len(fit.losses[-50:]),
            "evaluation": {"settings": asdict(evaluation), "held_out": scores},
            "one_step": None if one_step is None else {
                "settings": asdict(one_step), "final_loss": sum(fast.losses[-50:]) / len(fast.losses[-50:]),
                "held_out": one_step_scores},
            "wall_times_s": times, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine()}
    assemble_weights(out / "weights", out / "stage1", fit.adapter_path, fast.adapter_path if fast else None, card)
    return card


def main(argv: Optional[Sequence[str]] = None) -> int:
    d1, d2, de = Stage1Settings(), Stage2Settings(), EvalSettings()
    ap = argparse.ArgumentParser(prog="python -m lumix_core.toy.reproduce", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="new (or empty) folder for everything the run makes")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (use 1 on a busy machine)")
    ap.add_argument("--stage1-steps", type=int, default=d1.steps)
    ap.add_argument("--stage1-scenes", type=int, default=d1.scenes)
    ap.add_argument("--stage2-steps", type=int, default=d2.steps)
    ap.add_argument("--stage2-scenes", type=int, default=d2.scenes)
    ap.add_argument("--eval-scenes", type=int, default=de.scenes)
    ap.add_argument("--stage2-rank", type=int, default=d2.rank)
    ap.add_argument("--photo-prob", type=float, default=d2.photo_conditioning_prob,
                    help="share of stage-2 scenes trained as photo decompositions")
    ap.add_argument("--one-step-steps", type=int, default=ONE_STEP_SETTINGS.steps,
                    help="steps of the one-step decomposition adapter (0: do not train one)")
    ap.add_argument("--reuse-stage1", metavar="DIR",
                    help="copy the stage-1 backbone + text encoder from DIR (e.g. lumix_core/toy/weights, made "
                         "by this recipe's stage 1) instead of training them again")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(max(1, args.threads))
    try:
        card = run(Path(args.out), replace(d1, steps=args.stage1_steps, scenes=args.stage1_scenes),
                   replace(d2, steps=args.stage2_steps, scenes=args.stage2_scenes, rank=args.stage2_rank,
                           photo_conditioning_prob=args.photo_prob),
                   replace(de, scenes=args.eval_scenes),
                   reuse_stage1=Path(args.reuse_stage1) if args.reuse_stage1 else None,
                   one_step=replace(ONE_STEP_SETTINGS, steps=args.one_step_steps) if args.one_step_steps > 0 else None)
    except FileExistsError as e:
        print(f"reproduce: {e}", file=sys.stderr)
        return 2
    print(summary_table(card["evaluation"]["held_out"]))
    if card["one_step"] is not None:
        print("\none-step adapter (decomposition only):\n" + summary_table(card["one_step"]["held_out"]))
    print(json.dumps({"wall_times_s": card["wall_times_s"]}, indent=1))
    print(f"model folder: {Path(args.out) / 'weights'} (copy its files into lumix_core/toy/weights to ship it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

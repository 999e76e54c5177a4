"""One-step vs multi-step decomposition of the shipped toy, timed side by side.

Both variants decompose the same batch of held-out photos with the shipped backbone: the
multi-step adapter with ``--steps`` Euler steps (24 as the toy evaluates, no negative pass:
decomposition runs with CFG 1) and the one-step adapter in its one call. Each call includes
the toy VAE's encode/decode and the maps' finishing, i.e. what ``lumix decompose`` does per
photo, minus file I/O. Timings are interleaved (``_measure.interleaved_times``) and use the
process's CPU time by default, which other jobs on a shared machine disturb far less.

    python bench/bench_one_step.py [--photos 8] [--steps 24] [--repeats 5] [--threads 1] [--wall]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import interleaved_times  # noqa: E402

from lumix_core.toy.model import ONE_STEP_ADAPTER_FILE, WEIGHTS_DIR, ToyLumiX  # noqa: E402
from lumix_core.toy.scoring.held_out import color_images, held_out_scenes  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wall", action="store_true", help="wall-clock time instead of process CPU time")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    multi = ToyLumiX.load(WEIGHTS_DIR)
    fast = ToyLumiX.load(WEIGHTS_DIR, adapter=WEIGHTS_DIR / ONE_STEP_ADAPTER_FILE)
    color = color_images(held_out_scenes(args.photos))
    prompts = [""] * args.photos

    def run(model, **kw):
        def call():
            with torch.inference_mode():
                model.generate(prompts, color=color, true_cfg=1.0, **kw)
        return call

    times = interleaved_times({"multi": run(multi, steps=args.steps), "one_step": run(fast)},
                              repeats=args.repeats, clock=time.perf_counter if args.wall else time.process_time)
    clock = "wall" if args.wall else "CPU"
    print(f"{args.photos} photos, {args.threads} thread(s), {clock} time, median of {args.repeats}")
    print(f"multi-step ({args.steps} steps): {times['multi'] / args.photos * 1000:8.1f} ms per photo")
    print(f"one-step:                {times['one_step'] / args.photos * 1000:8.1f} ms per photo")
    print(f"speed-up: {times['multi'] / times['one_step']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

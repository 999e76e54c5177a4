"""Upper bound for the toy's stage 2: train the backbone *and* the adapter, not the adapter alone.

    python experiments/full_finetune/run.py --cache RUN/cache --out FT.jsonl [--steps 1000]

Why: with the backbone frozen the toy learns a prior instead of reading its photo
(docs/toy_model.md). If the same network, every weight trainable, reads the photo after the
same number of steps, the limit is what the frozen backbone offers the adapter; if it does
not, the limit is the network's size or the training budget. Same objective, data order,
draws and evaluator as ``lumix-train fit`` with the toy recipe (:mod:`lumix_core.toy.recipe`);
the learning rate of the backbone is ``--backbone-lr``. Prints the held-out decomposition
scores every ``--every`` steps (16 held-out scenes, 8 Euler steps) and writes them as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from lumix_core.model.adapter import LumiXAdapter, default_spec
from lumix_core.model.flux_io import load_flux
from lumix_core.sampling.denoiser import FluxDenoiser, TextConditioning
from lumix_core.toy.model import BACKBONE_FILE, TEXT_FILE, WEIGHTS_DIR
from lumix_core.toy.recipe import Stage2Settings
from lumix_core.toy.scoring.training_scores import training_evaluator
from lumix_core.toy.text import ToyTextEncoder
from lumix_core.train.cache import LatentCache
from lumix_core.train.fit import DataOrder
from lumix_core.train.lr_schedule import make_scheduler
from lumix_core.train.objective import (
    STREAM_INIT,
    DrawSettings,
    draw_scene,
    make_noisy_batch,
    sample_generator,
    scene_losses,
)


def main() -> int:
    s = Stage2Settings()
    ap = argparse.ArgumentParser(prog="python experiments/full_finetune/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", required=True, help="new JSON-lines file for the scores")
    ap.add_argument("--weights", default=str(WEIGHTS_DIR))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--backbone-lr", type=float, default=3e-4)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        print(f"{out} exists; choose a new --out", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    weights = Path(args.weights)
    model = load_flux(weights / BACKBONE_FILE, dtype=torch.float32)
    text = ToyTextEncoder.load(weights / TEXT_FILE)
    cache = LatentCache(args.cache)
    c = model.config
    adapter = LumiXAdapter(default_spec(maps=cache.maps, rank=s.rank, hidden=c.hidden_size, double_blocks=c.depth,
                                        single_blocks=c.depth_single_blocks))
    adapter.reset_parameters(sample_generator(s.seed, 0, stream=STREAM_INIT))
    model.attach(adapter, share_query=True)
    model.train().requires_grad_(True)
    groups = [{"params": list(adapter.parameters()), "lr": s.lr},
              {"params": list(model.parameters()), "lr": args.backbone_lr}]
    opt = torch.optim.AdamW(groups)
    sched = make_scheduler(opt, s.warmup_steps, args.steps, "cosine")
    order = DataOrder(len(cache) - s.holdout, s.seed)
    draw = DrawSettings(caption_dropout=s.caption_dropout, photo_conditioning_prob=s.photo_conditioning_prob)
    empty = cache.empty_conditioning()
    denoise = FluxDenoiser(model)
    evaluate = training_evaluator(text)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        positions = range((step - 1) * s.batch_size, step * s.batch_size)
        scenes = [cache.scene(order(p)) for p in positions]
        x0 = torch.stack([sc.latents for sc in scenes]).float()
        draws = [draw_scene(s.seed, p, tuple(x0.shape[2:]), draw) for p in positions]
        batch = make_noisy_batch(x0, draws, cache.maps.query_index)
        txt = torch.stack([empty[0] if d.drop_caption else sc.txt for sc, d in zip(scenes, draws)]).float()
        y = torch.stack([empty[1] if d.drop_caption else sc.y for sc, d in zip(scenes, draws)]).float()
        loss = scene_losses(denoise(batch.x_t, batch.t, TextConditioning(txt, y), 1.0), batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        if step % args.every == 0 or step == args.steps:
            scores = {"step": step, "loss": float(loss), "seconds": time.perf_counter() - start,
                      **evaluate(model, step)}
            model.train().requires_grad_(True)  # the evaluator's view sets eval / no-grad
            print(json.dumps(scores), flush=True)
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(scores) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

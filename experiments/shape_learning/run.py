"""Why do the toy's decompositions draw no spheres? Store, generalise, or neither: five readers, one check.

    python experiments/shape_learning/run.py READER --out FILE.jsonl [--pool one] [--steps 1500]
        [--train-scenes 2000] [--init ADAPTER] [--heads 2] [--every 250]

Every reader is trained with the one-step normal loss of the shipped recipe (angular error with
detail weight 20 + the small MSE share, :func:`lumix_core.train.one_step.pixel_terms`; the
transformer readers on all maps, :func:`~lumix_core.train.one_step.one_step_losses`) and scored
every ``--every`` steps by the shape check (:mod:`lumix_core.toy.shape_check`) on the held-out
one-object renders of experiments/object_normals/run.py (the 33 of the evaluation stream's first
240 scenes: 19 spheres, 14 boxes). The object mask is taken from the *true* albedo, so only the
normals are judged. READER:

* ``adapter``: a one-step Tensor LoRA (rank 32, QBA) on the frozen shipped backbone -- the shipped
  reader's setting; ``--init`` starts it from an adapter file (the shipped one-step adapter);
* ``full``: the same with every backbone weight trainable too (learning rate ``--backbone-lr``);
* ``scratch``: a fresh toy FLUX with ``--heads`` heads (width 128, 2 + 2 blocks) and adapter, all
  trained from random weights on the decomposition alone (no stage 1);
* ``conv``: no transformer -- a 6-layer 3 x 3 conv net (width 64, 166 k parameters) from the color's
  toy-VAE latent cells ``[16, 16, 16]`` to the normal's, the same loss;
* ``token-mlp``: the same depth and width, but on FLUX's tokens (2 x 2 cells) with 1 x 1 kernels: a
  per-token MLP that sees no neighbour -- what a transformer without useful attention can do.

``--pool``: ``memorize`` trains on the 33 scored scenes themselves (can the reader *store* their
spheres?); ``one``/``all`` on ``--train-scenes`` fresh renders of the training stream after the
scenes the shipped recipe trained on, one-object scenes only or every scene (does it *generalise*?).
Results and what they say: experiments/shape_learning/README.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lumix_core.io.files import write_bytes_atomically
from lumix_core.io.png import encode_png
from lumix_core.latents import PATCH
from lumix_core.maps import RELEASE
from lumix_core.model.adapter import LumiXAdapter, default_spec
from lumix_core.model.checkpoint import ModelShape, load_adapter
from lumix_core.sampling.denoiser import FluxDenoiser, TextConditioning
from lumix_core.sampling.sampler import decompose_one_step
from lumix_core.toy import vae
from lumix_core.toy.backbone import make_backbone, toy_config
from lumix_core.toy.model import WEIGHTS_DIR, ToyLumiX
from lumix_core.toy.recipe import ONE_STEP_SETTINGS
from lumix_core.toy.scoring.object_checks import one_object_scenes
from lumix_core.toy.shape_check import SHAPES, better_fit, object_mask, shape_residuals
from lumix_core.train.one_step import make_one_step_batch, one_step_losses, pixel_terms
from lumix_core.train.validation import contact_sheet
from lumix_core.world.dataset import scene_seed
from lumix_core.world.render import render
from lumix_core.world.scene import sample_scene

READERS = ("adapter", "full", "scratch", "conv", "token-mlp")
POOLS = ("memorize", "one", "all")
NORMAL = RELEASE.names.index("normal")
COLOR = RELEASE.names.index("color")


def latents_of(encoded: list[dict[str, np.ndarray]]) -> torch.Tensor:
    """``[S, M, C, h, w]`` toy latents of the release maps of rendered scenes."""
    return torch.stack([vae.encode(torch.stack([torch.from_numpy(e[n]) for n in RELEASE.names])) for e in encoded])


def training_pool(pool: str, count: int) -> torch.Tensor:
    """Fresh scenes of the shipped recipe's training stream, after the ones it trained on."""
    specs, index = [], ONE_STEP_SETTINGS.scenes
    while len(specs) < count:
        spec = sample_scene(scene_seed(ONE_STEP_SETTINGS.data_seed, index))
        index += 1
        if pool == "all" or len(spec.objects) == 1:
            specs.append(spec)
    return torch.cat([latents_of([render(s).encode() for s in specs[k:k + 64]]) for k in range(0, len(specs), 64)])


class ConvReader(nn.Module):
    """Color latent cells ``[B, 16, h, w]`` -> normal latent cells by ``kernel`` x ``kernel``
    convolutions; ``per_token``: on FLUX's 2 x 2-cell tokens ``[B, 64, h/2, w/2]`` with 1 x 1
    kernels, i.e. one MLP per token that sees nothing of its neighbours."""

    def __init__(self, width: int = 64, layers: int = 6, per_token: bool = False) -> None:
        super().__init__()
        c, k = vae.LATENT_CHANNELS * (PATCH * PATCH if per_token else 1), 1 if per_token else 3
        mods: list[nn.Module] = [nn.Conv2d(c, width, k, padding=k // 2), nn.GELU()]
        for _ in range(layers - 2):
            mods += [nn.Conv2d(width, width, k, padding=k // 2), nn.GELU()]
        self.net = nn.Sequential(*mods, nn.Conv2d(width, c, k, padding=k // 2))
        self.per_token = per_token

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """``x0 [B, M, C, h, w]`` -> predicted normal latents ``[B, C, h, w]``."""
        if self.per_token:
            return F.pixel_shuffle(self.net(F.pixel_unshuffle(x0[:, COLOR], PATCH)), PATCH)
        return self.net(x0[:, COLOR])


class TransformerReader:
    """A one-step LumiX decomposition (QBA + Tensor LoRA) as in ``lumix-train fit --objective one-step``."""

    def __init__(self, kind: str, init: str | None, heads: int) -> None:
        shipped = ToyLumiX.load(WEIGHTS_DIR, with_adapter=False)
        self.flux = make_backbone(toy_config(num_heads=heads)) if kind == "scratch" else shipped.backbone
        c = self.flux.config
        if init:
            self.adapter = load_adapter(init, ModelShape(c.hidden_size, c.depth, c.depth_single_blocks),
                                        dtype=torch.float32)
        else:
            self.adapter = LumiXAdapter(default_spec(RELEASE, rank=ONE_STEP_SETTINGS.rank, hidden=c.hidden_size,
                                                     double_blocks=c.depth, single_blocks=c.depth_single_blocks))
            self.adapter.reset_parameters(torch.Generator().manual_seed(0))
        self.adapter.train().requires_grad_(True)
        self.flux.requires_grad_(kind != "adapter")
        self.flux.attach(self.adapter, share_query=True)
        self.denoise = FluxDenoiser(self.flux)
        with torch.no_grad():
            self.empty = shipped.text.encode([""])

    def cond(self, n: int) -> TextConditioning:
        txt, y = self.empty
        return TextConditioning(txt.expand(n, *txt.shape[1:]), y.expand(n, -1))

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        batch = make_one_step_batch(x0, COLOR)
        v = self.denoise(batch.x_t, batch.t, self.cond(x0.shape[0]), 1.0)
        return one_step_losses(v, batch, RELEASE, "both", vae.decode, ONE_STEP_SETTINGS.one_step_detail_weight).mean()

    @torch.no_grad()
    def normals(self, x0: torch.Tensor) -> torch.Tensor:
        latents = decompose_one_step(self.denoise, x0[:, COLOR], RELEASE, self.cond(x0.shape[0]))
        return latents.reshape(x0.shape)[:, NORMAL]


def shape_scores(normal_latents: torch.Tensor, masks: list[np.ndarray], shapes: list[tuple[str, str]],
                 true_normals: torch.Tensor) -> dict:
    """Per true shape: how many are named right and the mean angle to each shape model (objects
    given by ``masks``, one per scene); and the mean normal error against ``true_normals [S, H, W, 3]``."""
    normals = vae.decode_display(normal_latents)
    residuals = [shape_residuals(m, n) for m, n in zip(masks, normals)]
    row = {}
    for shape in SHAPES:
        res = [r for r, (_, s) in zip(residuals, shapes) if s == shape]
        row[f"{shape}_named"] = sum(better_fit(r) == shape for r in res)
        for model in SHAPES:
            row[f"{shape}_to_{model}_deg"] = round(float(np.mean([r[model] for r in res])), 2)
    row["shape_following"] = round((row["sphere_named"] + row["box_named"]) / len(shapes), 3)
    row["normal_deg"] = round(float(torch.rad2deg(torch.arccos(
        F.cosine_similarity(normals * 2 - 1, true_normals, dim=-1).clamp(-1, 1))).mean()), 2)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python experiments/shape_learning/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("reader", choices=READERS)
    ap.add_argument("--out", required=True, help="JSON lines, one per evaluation (refuses to overwrite)")
    ap.add_argument("--pool", choices=POOLS, default="one")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--train-scenes", type=int, default=2000)
    ap.add_argument("--init", help="adapter file to start from (adapter/full readers)")
    ap.add_argument("--heads", type=int, default=2, help="heads of the scratch reader's FLUX")
    ap.add_argument("--lr", type=float, default=ONE_STEP_SETTINGS.lr)
    ap.add_argument("--backbone-lr", type=float, default=3e-4)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--figure", help="PNG of six held-out spheres at the end: input | true normal | reader's normal")
    args = ap.parse_args(argv)
    if args.init and args.reader not in ("adapter", "full"):
        print(f"--init starts the adapter or full reader from an adapter file; the {args.reader} reader has none",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    for path in (out, Path(args.figure) if args.figure else None):
        if path is not None and path.exists():
            print(f"{path} exists; choose a new path (nothing is overwritten)", file=sys.stderr)
            return 2
    torch.set_num_threads(1)
    torch.manual_seed(0)
    scenes = one_object_scenes(240)
    held_out = [r.encode() for r in scenes]
    shapes = [(r.spec.objects[0].material.colors[0], r.spec.objects[0].shape) for r in scenes]
    held_x0 = latents_of(held_out)
    true_normals = vae.decode(held_x0[:, NORMAL])  # through the toy VAE, as every reader's output is
    masks = [object_mask(torch.from_numpy(e["albedo"]), color) for e, (color, _) in zip(held_out, shapes)]
    if any(m is None for m in masks):
        raise RuntimeError("a held-out object is not found in its own true albedo; the shape check's data changed")
    train_x0 = held_x0 if args.pool == "memorize" else training_pool(args.pool, args.train_scenes)
    if args.reader in ("conv", "token-mlp"):
        net = ConvReader(per_token=args.reader == "token-mlp")
        groups = [{"params": list(net.parameters()), "lr": args.lr}]
        loss_of = lambda x0: pixel_terms(vae.decode(net(x0)), vae.decode(x0[:, NORMAL]), "normal",  # noqa: E731
                                         ONE_STEP_SETTINGS.one_step_detail_weight).mean()
        normals_of = lambda x0: net(x0).detach()  # noqa: E731
        batch_size = 16
    else:
        reader = TransformerReader(args.reader, args.init, args.heads)
        groups = [{"params": list(reader.adapter.parameters()), "lr": args.lr}]
        if args.reader != "adapter":
            groups.append({"params": [p for n, p in reader.flux.named_parameters() if "lumix" not in n],
                           "lr": args.backbone_lr})
        loss_of, normals_of, batch_size = reader.loss, reader.normals, ONE_STEP_SETTINGS.batch_size
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    params = [p for g in groups for p in g["params"]]
    draw = torch.Generator().manual_seed(1)
    start, smoothed = time.perf_counter(), float("nan")
    for step in range(args.steps + 1):
        if step:
            loss = loss_of(train_x0[torch.randint(0, len(train_x0), (batch_size,), generator=draw)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            value = loss.item()
            smoothed = value if step == 1 else 0.95 * smoothed + 0.05 * value
        if step % args.every == 0:
            with torch.no_grad():
                row = {"step": step, "train_loss": round(smoothed, 4),
                       **shape_scores(normals_of(held_x0), masks, shapes, true_normals),
                       "wall_s": round(time.perf_counter() - start)}
            print(json.dumps(row), flush=True)
            with out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    if args.figure:
        spheres = [k for k, (_, s) in enumerate(shapes) if s == "sphere"][:6]
        with torch.no_grad():
            predicted = vae.decode_display(normals_of(held_x0[spheres]))
        rows = [torch.stack([torch.from_numpy(held_out[k]["color"]), torch.from_numpy(held_out[k]["normal"]), p])
                for k, p in zip(spheres, predicted)]
        sheet = contact_sheet(rows, labels=["input", "true normal", args.reader], scale=3)
        write_bytes_atomically(Path(args.figure), encode_png(sheet), overwrite=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

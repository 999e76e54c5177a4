"""Does the frozen backbone *know* the other maps? ``python -m lumix_core.toy.probe [--weights DIR]``.

LumiX (like Intrinsic LoRA before it) rests on one premise: a text-to-image generator
already represents depth, normals and albedo internally, so a small adapter only has to read
them out. This measures the premise on a toy backbone: the photo's clean color latent goes
through the plain backbone at t = 0 (as the color slot does during decomposition), each
block's image-token features are collected, and a ridge regression per token predicts each
map's latent token from them. The score is R² on held-out scenes, next to two baselines:

* ``position``: a one-hot of the token's position only (what a map's average layout explains:
  the floor's depth gradient, the usual object places);
* ``input``: the color token itself (64 numbers: what needs no backbone at all).

Features that beat ``position`` only as much as ``input`` does carry no knowledge of that map
beyond the pixels; then an adapter has to *compute* the map rather than read it.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np
import torch

from ..latents import pack
from ..sampling.denoiser import FluxDenoiser, TextConditioning
from . import vae
from .model import WEIGHTS_DIR, ToyLumiX
from .scoring.held_out import stream_scenes
from .seed_streams import STAGE2_DATA_SEED

PROBED_MAPS = ("albedo", "irradiance", "depth", "normal")


def _ridge_r2(x: torch.Tensor, y: torch.Tensor, train: int, lam: float = 1e-2) -> float:
    """R² on scenes ``train:`` of a ridge fit on scenes ``:train``; ``x [N, L, F]``, ``y [N, L, D]``."""
    x = torch.cat([x.double(), torch.ones(*x.shape[:2], 1, dtype=torch.double)], dim=-1)
    y = y.double()
    a, b = x[:train].reshape(-1, x.shape[-1]), y[:train].reshape(-1, y.shape[-1])
    w = torch.linalg.solve(a.T @ a + lam * a.shape[0] * torch.eye(a.shape[1], dtype=torch.double), a.T @ b)
    pred, truth = x[train:].reshape(-1, x.shape[-1]) @ w, y[train:].reshape(-1, y.shape[-1])
    return float(1.0 - ((pred - truth) ** 2).sum() / ((truth - truth.mean(0)) ** 2).sum())


@torch.no_grad()
def probe(model: ToyLumiX, scenes: int = 320, held_out: int = 64, data_seed: int = STAGE2_DATA_SEED,
          t: float = 0.0) -> dict[str, dict[str, float]]:
    """``{feature set: {map: R²}}`` for the baselines, every block, and all blocks together.
    ``t`` > 0 noises the color as flow matching does (``(1-t) x0 + t eps``) before probing."""
    results = stream_scenes(data_seed, scenes, 64)
    encoded = [r.encode() for r in results]

    def latents(name: str) -> torch.Tensor:
        return vae.encode(torch.from_numpy(np.stack([e[name] for e in encoded])))

    color = latents("color")
    if t > 0:
        g = torch.Generator().manual_seed(0)
        color = (1.0 - t) * color + t * torch.randn(color.shape, generator=g)
    targets = {m: pack(latents(m)) for m in PROBED_MAPS}
    backbone = model.backbone
    tokens = pack(color).shape[1]
    features: dict[str, torch.Tensor] = {}
    hooks = [b.register_forward_hook(lambda _m, _i, out, i=i: features.__setitem__(f"double block {i}", out[0]))
             for i, b in enumerate(backbone.double_blocks)]
    hooks += [b.register_forward_hook(lambda _m, _i, out, i=i: features.__setitem__(f"single block {i}",
                                                                                     out[:, -tokens:]))
              for i, b in enumerate(backbone.single_blocks)]
    try:
        txt, y = model.text.encode([""] * scenes)
        FluxDenoiser(backbone)(color, torch.full((scenes,), float(t)), TextConditioning(txt, y), 1.0)
    finally:
        for h in hooks:
            h.remove()
    position = torch.eye(tokens).expand(scenes, tokens, tokens)
    sets = {"position": position, "input": torch.cat([position, pack(color)], -1)}
    sets.update({k: torch.cat([position, v], -1) for k, v in features.items()})
    sets["all blocks"] = torch.cat([position, *features.values()], -1)
    train = scenes - held_out
    return {name: {m: _ridge_r2(x, targets[m], train) for m in PROBED_MAPS} for name, x in sets.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lumix_core.toy.probe", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(WEIGHTS_DIR), help="toy model folder (default: the shipped one)")
    ap.add_argument("--scenes", type=int, default=320, help="scenes rendered (the last 64 are held out)")
    ap.add_argument("--t", type=float, default=0.0, help="timestep of the probed color (0: clean, as pinned)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    scores = probe(ToyLumiX.load(args.weights, with_adapter=False), scenes=args.scenes, t=args.t)
    print("| features (+ token position) | " + " | ".join(f"R² {m}" for m in PROBED_MAPS) + " |")
    print("|---" * (len(PROBED_MAPS) + 1) + "|")
    for name, row in scores.items():
        print(f"| {name} | " + " | ".join(f"{row[m]:.3f}" for m in PROBED_MAPS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Builders for the trainer tests: a tiny FLUX file, synthetic datasets, encoders and caches.

The synthetic encoder stands in for the FLUX VAE and text encoders at the
:class:`lumix_core.train.encoder.Encoder` boundary: deterministic, cheap, and with the
shapes of the tiny FLUX config (16 latent channels, 32 text features, 16 pooled).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lumix_core.latents import LATENT_CHANNELS, VAE_FACTOR
from lumix_core.maps import MapSet
from lumix_core.model.flux import Flux, tiny_config
from lumix_core.model.flux_io import save_flux
from lumix_core.train.cache import CacheWriter
from lumix_core.train.config import FitConfig

CONTEXT, POOLED, TEXT_TOKENS = 32, 16, 8
MAPS3 = MapSet.parse("albedo,color,depth")


class SyntheticEncoder:
    """8x8 average pooling + a fixed 3->16 channel mix; captions hashed to fixed random vectors."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1234)
        self.mix = torch.randn(LATENT_CHANNELS, 3, generator=g)
        self.image_calls = 0

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        x = images.permute(0, 3, 1, 2).float()
        pooled = F.avg_pool2d(x, VAE_FACTOR)
        return torch.einsum("oc,nchw->nohw", self.mix, pooled * 2 - 1)

    def encode_text(self, captions: Sequence[str]):
        txt, y = [], []
        for c in captions:
            g = torch.Generator().manual_seed(zlib.crc32(c.encode("utf-8")))
            txt.append(torch.randn(TEXT_TOKENS, CONTEXT, generator=g))
            y.append(torch.randn(POOLED, generator=g))
        return torch.stack(txt), torch.stack(y)

    def describe(self) -> dict:
        return {"host": "synthetic"}


def write_png(path: Path, rgb01: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = (np.clip(rgb01, 0, 1) * 255 + 0.5).astype(np.uint8)
    assert cv2.imwrite(str(path), img[:, :, ::-1])


def scene_image(seed: int, width: int, height: int) -> np.ndarray:
    """A smooth random RGB image (upsampled noise) in [0, 1]."""
    rng = np.random.default_rng(seed)
    small = rng.random((max(2, height // 8), max(2, width // 8), 3)).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def write_dataset(root: Path, ids: Sequence[str], maps: MapSet = MAPS3, width: int = 32, height: int = 32,
                  layout: str = "release") -> Path:
    """``layout``: "release" (<folder>/<id>_<folder>.png + captions_blip2/<id>_color.json) or
    "plain" (<canonical>/<id>.png + captions/<id>.txt)."""
    for n, sid in enumerate(ids):
        base = scene_image(n, width, height)
        for k, name in enumerate(maps.names):
            if layout == "release":
                folder = maps.folder_name(name)
                path = root / folder / f"{sid}_{folder}.png"
            else:
                path = root / name / f"{sid}.png"
            write_png(path, np.roll(base, k, axis=2) * (0.5 + 0.5 * k / max(1, maps.size - 1)))
        if layout == "release":
            cap = root / "captions_blip2" / f"{sid}_color.json"
            cap.parent.mkdir(parents=True, exist_ok=True)
            cap.write_text(json.dumps({"caption": f"a room number {n}"}))
        else:
            cap = root / "captions" / f"{sid}.txt"
            cap.parent.mkdir(parents=True, exist_ok=True)
            cap.write_text(f"a room number {n}\n")
    return root


def tiny_flux_file(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = Flux(tiny_config(hidden_size=64, num_heads=2, context_in_dim=CONTEXT, vec_in_dim=POOLED))
    with torch.no_grad():  # modulation weights are small at init; make the blocks do something
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return save_flux(model, path)


def synthetic_cache(path: Path, maps: MapSet = MAPS3, scenes: int = 4, size: int = 4, seed: int = 0) -> Path:
    """A cache of smooth, map-dependent latents ``[M, 16, size, size]`` written with CacheWriter."""
    g = torch.Generator().manual_seed(seed)
    enc = SyntheticEncoder()
    with CacheWriter(path, maps, dtype="fp32", shard_size=3) as w:
        for n in range(scenes):
            base = F.interpolate(torch.randn(1, LATENT_CHANNELS, 2, 2, generator=g), size=(size, size),
                                 mode="bilinear", align_corners=False)[0]
            latents = torch.stack([base * (1 + 0.5 * k) + 0.3 * k for k in range(maps.size)])
            txt, y = enc.encode_text([f"scene {n}"])
            w.add(f"s{n}", latents, txt[0], y[0], f"scene {n}")
        e_txt, e_y = enc.encode_text([""])
        return w.finish(e_txt[0], e_y[0])


def fit_config(tmp: Path, cache: Path, flux: Path, name: str = "run", **kw) -> FitConfig:
    """Fast defaults for the tests (no progress bar, no validation unless asked)."""
    base = dict(cache=str(cache), flux=str(flux), output=str(tmp / name), steps=8, lr=3e-3, warmup_steps=0,
                rank=4, checkpoint_every=0, validate_every=0, validation_scenes=1, validation_steps=2,
                caption_dropout=0.0, device="cpu", gradient_checkpointing=False)
    base.update(kw)
    return FitConfig(**base)


def interrupted_and_resumed(tmp: Path, cache: Path, flux: Path, *, stop_at: int, name: str = "cut", **kw):
    """A run stopped (KeyboardInterrupt) right after step ``stop_at``, then resumed to the end:
    its :class:`FitResult` from the resume (the checkpoint it resumed from is left in place)."""
    import pytest

    from lumix_core.train.fit import run_fit

    def interrupt(step, loss):
        if step == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_fit(fit_config(tmp, cache, flux, name=name, **kw), on_step=interrupt)
    return run_fit(fit_config(tmp, cache, flux, name=name, resume=True, **kw))


def torchrun_fit(cache: Path, flux: Path, out: Path, *flags: str, steps: int, lr: float) -> None:
    """``lumix-train fit`` as two torchrun processes (gloo, CPU) of one scene each; ``flags`` are appended."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lumix_core.train", "--log-level", "WARNING", "fit",
           "--cache", str(cache), "--flux", str(flux), "--output", str(out), "--batch-size", "1",
           "--steps", str(steps), "--lr", str(lr), "--warmup-steps", "0", "--rank", "4", "--caption-dropout", "0.5",
           "--checkpoint-every", "0", "--validate-every", "0", "--validation-scenes", "1", "--validation-steps", "2",
           "--device", "cpu", "--backend", "gloo", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

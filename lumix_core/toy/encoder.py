"""The toy's implementation of the trainer's Encoder boundary (:mod:`lumix_core.train.encoder`).

``lumix-train prepare`` normally loads the FLUX VAE, CLIP-L and T5 through ComfyUI; the toy
hands its own pixel-unshuffle "VAE" and frozen word-table text encoder to
:func:`lumix_core.train.prepare.run_prepare` instead, so stage 2 goes through the very same
prepare -> cache -> fit path as a real training run.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from torch import Tensor

from . import vae
from .text import ToyTextEncoder


class ToyEncoder:
    """Images -> toy latents, captions -> toy text features (model space, as ``fit`` consumes)."""

    def __init__(self, text: ToyTextEncoder) -> None:
        self.text = text.eval()

    def encode_images(self, images: Tensor) -> Tensor:
        return vae.encode(images)

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        return self.text.encode(list(captions))

    def describe(self) -> dict[str, str]:
        digest = hashlib.sha256()
        for value in self.text.state_dict().values():
            digest.update(value.detach().cpu().numpy().tobytes())
        return {"vae": f"lumix_core.toy.vae (pixel unshuffle x{vae.FACTOR})",
                "text": "lumix_core.toy.text.ToyTextEncoder",
                "text_sha256": digest.hexdigest()[:16]}

"""The boundary between the trainer and the FLUX VAE / text encoders.

Why a protocol: the real encoders (FLUX VAE, CLIP-L, T5-XXL) are loaded through ComfyUI
(:mod:`lumix_core.train.comfy_host`) and weigh ~10 GB; tests and other hosts plug in any
object with these methods. Everything the trainer stores is in *model space*: VAE latents
after :func:`lumix_core.latents.latent_in`, text conditioning as FLUX consumes it.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from torch import Tensor


@runtime_checkable
class Encoder(Protocol):
    """Images and captions -> what FLUX consumes."""

    def encode_images(self, images: Tensor) -> Tensor:
        """``[N, H, W, 3]`` float in [0, 1] -> latents ``[N, C, H/8, W/8]`` in model space (after ``latent_in``)."""
        ...

    def encode_text(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Captions -> ``(txt [N, Lt, ctx], pooled [N, vec])`` (T5 sequence, CLIP pooled for FLUX)."""
        ...

    def describe(self) -> dict[str, str]:
        """What produced the cache (file names, host version), stored in its manifest."""
        ...


@runtime_checkable
class Decoder(Protocol):
    """Latents in model space -> pictures, for validation contact sheets."""

    def decode_latents(self, latents: Tensor) -> Tensor:
        """``[N, C, h, w]`` model-space latents -> ``[N, H, W, 3]`` float in [0, 1]."""
        ...

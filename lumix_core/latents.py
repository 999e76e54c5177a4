"""FLUX latent conventions: VAE scaling, 2x2 patch packing, position ids, size checks.

Beside :mod:`lumix_core.maps` because everything that turns images into latents or tokens
(the sampler, the trainer, the world's dataset sizes, the toy VAE, the nodes) reads it.

May import: nothing from lumix_core.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

#: FLUX VAE latent scaling: model space = (z - shift) * scale.
LATENT_SCALE = 0.3611
LATENT_SHIFT = 0.1159
LATENT_CHANNELS = 16
#: Pixels per latent cell (VAE downsampling) and latent cells per token (patch size).
VAE_FACTOR = 8
PATCH = 2
#: Pixel sizes must be a multiple of this (VAE factor x patch size).
SIZE_MULTIPLE = VAE_FACTOR * PATCH


def latent_in(z: Tensor) -> Tensor:
    """VAE latent -> model space."""
    return (z - LATENT_SHIFT) * LATENT_SCALE


def latent_out(x: Tensor) -> Tensor:
    """Model space -> VAE latent."""
    return x / LATENT_SCALE + LATENT_SHIFT


def nearest_size(pixels: int) -> int:
    """The valid side (a positive multiple of 16) closest to ``pixels``, to suggest as a fix."""
    return max(SIZE_MULTIPLE, round(pixels / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def check_size(width: int, height: int) -> None:
    """Raise a clear error unless both sides are positive multiples of 16 pixels."""
    bad = [f"{name} {v}" for name, v in (("width", width), ("height", height)) if v <= 0 or v % SIZE_MULTIPLE]
    if bad:
        raise ValueError(
            f"{' and '.join(bad)} not a multiple of {SIZE_MULTIPLE} pixels: FLUX works on 2x2 patches of "
            f"8x-downsampled latents. Use e.g. {nearest_size(width)}x{nearest_size(height)}.")


def pack(x: Tensor, patch: int = PATCH) -> Tensor:
    """``[B, C, H, W] -> [B, (H/p)(W/p), C p p]`` (FLUX token layout)."""
    H, W = x.shape[-2:]
    if H % patch or W % patch:
        raise ValueError(f"latent size {H}x{W} is not a multiple of the patch size {patch}")
    return rearrange(x, "B C (h ph) (w pw) -> B (h w) (C ph pw)", ph=patch, pw=patch)


def unpack(x: Tensor, height: int, width: int, patch: int = PATCH) -> Tensor:
    """Inverse of :func:`pack`; ``height``/``width`` are the latent sizes."""
    return rearrange(x, "B (h w) (C ph pw) -> B C (h ph) (w pw)", h=height // patch, w=width // patch, ph=patch,
                     pw=patch)


def image_ids(batch: int, height: int, width: int, patch: int = PATCH, device=None) -> Tensor:
    """Position ids ``[B, L, 3]`` (0, row, col) for packed latents; identical for every map."""
    h, w = height // patch, width // patch
    ids = torch.zeros(h, w, 3, device=device)
    ids[..., 1] = torch.arange(h, device=device)[:, None]
    ids[..., 2] = torch.arange(w, device=device)[None, :]
    return ids.reshape(1, h * w, 3).expand(batch, -1, -1)

"""Validation contact sheets: every map of a few fixed prompts, sampled during training.

Rows are scenes (prompts taken from the cache), columns are maps in group order (named
above each column; tiles narrower than 64 px are enlarged so the names fit). The noise
seed and prompts are fixed, so sheets of successive steps are comparable. Decoding is
pluggable (:class:`~lumix_core.train.encoder.Decoder`): a cache made with ComfyUI needs
ComfyUI's VAE to show real pixels, so the default :class:`PreviewDecoder` shows the first
three latent channels, min-max normalised per tile and enlarged 8x -- enough to see layout
and whether the maps of a scene agree, with no VAE in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..io.files import write_bytes_atomically
from ..io.png import encode_png
from ..latents import VAE_FACTOR
from ..model.flux import Flux
from ..sampling.denoiser import FluxDenoiser, TextConditioning
from ..sampling.sampler import decompose_one_step, sample_euler, schedule_for, shared_noise
from .cache import LatentCache


class PreviewDecoder:
    """Latent channels 0-2 as RGB, normalised per image, upscaled to pixel size (no VAE)."""

    def decode_latents(self, latents: Tensor) -> Tensor:
        x = latents[:, :3].float()
        if x.shape[1] < 3:
            x = torch.cat([x, x[:, -1:].expand(-1, 3 - x.shape[1], -1, -1)], dim=1)
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-8)
        x = x.repeat_interleave(VAE_FACTOR, dim=2).repeat_interleave(VAE_FACTOR, dim=3)
        return x.permute(0, 2, 3, 1).contiguous()


#: Height of the label strip above the columns (Pillow's default bitmap font is ~11 px tall).
LABEL_HEIGHT = 14


def contact_sheet(rows: Sequence[Tensor], gap: int = 4, labels: Optional[Sequence[str]] = None,
                  scale: int = 1) -> np.ndarray:
    """``rows[i]`` = ``[M, H, W, 3]`` in [0, 1] -> one uint8 image, white gaps between tiles.

    ``labels``: one name per column, written above it (map names, "input", "truth" ...);
    ``scale``: nearest-neighbour enlargement, so the model's pixels stay visible.
    """
    from PIL import Image, ImageDraw

    rows = [r.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2) if scale > 1 else r for r in rows]
    widths = [r.shape[0] * r.shape[2] + (r.shape[0] - 1) * gap for r in rows]
    top = LABEL_HEIGHT if labels else 0
    height = top + sum(r.shape[1] for r in rows) + (len(rows) - 1) * gap
    sheet = np.full((height, max(widths), 3), 255, dtype=np.uint8)
    y = top
    for r in rows:
        tiles = (r.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        x = 0
        for tile in tiles:
            sheet[y: y + tile.shape[0], x: x + tile.shape[1]] = tile
            x += tile.shape[1] + gap
        y += r.shape[1] + gap
    if labels:
        image = Image.fromarray(sheet)
        draw = ImageDraw.Draw(image)
        tile_w = rows[0].shape[2]
        for i, name in enumerate(labels):
            draw.text((i * (tile_w + gap) + 2, 1), str(name), fill="black")
        sheet = np.asarray(image).copy()
    return sheet


@torch.no_grad()
def render_validation(model: Flux, cache: LatentCache, path: Path, *, scenes: int, steps: int,
                      guidance: float, seed: int, decoder, device: torch.device,
                      autocast_dtype=None, text: dict | None = None, one_step: bool = False) -> Path:
    """Sample the first ``scenes`` prompts of the cache with the attached adapter; write a PNG.

    ``one_step``: the adapter decomposes photos in one step, so each scene's color is decomposed
    (:func:`decompose_one_step`) and shown above the scene's true maps instead."""
    maps = cache.maps
    denoise = FluxDenoiser(model)
    rows, prompts = [], []
    for i in range(min(scenes, len(cache))):
        scene = cache.scene(i)
        h, w = scene.record.height, scene.record.width
        cond = TextConditioning(scene.txt[None].to(device, torch.float32), scene.y[None].to(device, torch.float32))
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if one_step:
                color = scene.latents[maps.query_index][None].to(device, torch.float32)
                x = decompose_one_step(denoise, color, maps, cond, guidance=guidance)
            else:
                noise = shared_noise(1, maps, (cache.latent_channels, h, w), seed=seed + i, device=device)
                timesteps = schedule_for(w * VAE_FACTOR, h * VAE_FACTOR, steps, "release")
                x = sample_euler(denoise, noise, timesteps, cond, guidance=guidance, group=maps.size)
        rows.append(decoder.decode_latents(x.float()).float().cpu())
        prompts.append(scene.record.caption)
        if one_step:
            rows.append(decoder.decode_latents(scene.latents.to(device, torch.float32)).float().cpu())
            prompts.append("(truth)")
    meta = {"lumix.maps": maps.to_string(), "lumix.prompts": " | ".join(prompts), **(text or {})}
    sheet = contact_sheet(rows, labels=maps.names, scale=max(1, 64 // max(r.shape[2] for r in rows)))
    return write_bytes_atomically(path, encode_png(sheet, text=meta))

"""Velocity function of the reference FLUX on ``[B, C, H, W]`` latents, for the sampler."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..latents import image_ids, pack, unpack
from ..maps import check_group_batch
from ..model.flux import Flux


@dataclass
class TextConditioning:
    """FLUX text conditioning: T5 sequence ``txt [S, Lt, ctx]`` and CLIP pooled ``y [S, vec]``.

    ``S`` is 1 (one prompt for the whole batch) or the number of scenes (one per scene,
    shared by the scene's maps, as in the release).
    """

    txt: Tensor
    y: Tensor

    def per_item(self, batch: int, group: int) -> tuple[Tensor, Tensor]:
        S = self.txt.shape[0]
        scenes = check_group_batch(batch, group)
        if S == 1:
            return self.txt.expand(batch, -1, -1), self.y.expand(batch, -1)
        if S == scenes:
            return self.txt.repeat_interleave(group, 0), self.y.repeat_interleave(group, 0)
        if S == batch:
            return self.txt, self.y
        raise ValueError(f"conditioning for {S} prompts does not fit {scenes} scenes of {group} maps")


class FluxDenoiser:
    """``(x [B,C,H,W], t [B], cond, guidance) -> v [B,C,H,W]`` with the reference FLUX."""

    def __init__(self, model: Flux) -> None:
        self.model = model

    @property
    def group(self) -> int:
        return self.model.lumix.maps.size if self.model.lumix is not None else 1

    def __call__(self, x: Tensor, t: Tensor, cond: TextConditioning, guidance: float) -> Tensor:
        B, C, H, W = x.shape
        dtype = next(self.model.parameters()).dtype
        txt, y = cond.per_item(B, self.group)
        tokens = pack(x).to(dtype)
        ids = image_ids(B, H, W, device=x.device)
        txt_ids = torch.zeros(B, txt.shape[1], 3, device=x.device)
        g = torch.full((B,), float(guidance), device=x.device, dtype=dtype)
        out = self.model(tokens, ids, txt.to(dtype), txt_ids, t.to(dtype), y.to(dtype), g)
        return unpack(out.to(x.dtype), H, W)

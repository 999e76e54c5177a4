"""FLUX attention maths (head split, RoPE, joint attention) as in the BFL reference implementation.

Hosts bring their own ``attention`` (ComfyUI: ``comfy.ldm.flux.math.attention``); this one
serves the reference FLUX of :mod:`lumix_core.model.flux` and is the default of the QBA blocks.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from einops import rearrange
from torch import Tensor


def split_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """The fused QKV projection's output as q, k, v ``[B, H, L, D]``: views of ``qkv``, no copy."""
    return rearrange(qkv, "B L (K H D) -> K B H L D", K=3, H=num_heads).unbind(0)


def rope(pos: Tensor, dim: int, theta: int) -> Tensor:
    """Rotation matrices ``[..., n, dim/2, 2, 2]`` for positions ``pos[..., n]``."""
    assert dim % 2 == 0
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta**scale)
    out = torch.einsum("...n,d->...nd", pos.to(torch.float64), omega)
    out = torch.stack([torch.cos(out), -torch.sin(out), torch.sin(out), torch.cos(out)], dim=-1)
    return out.reshape(*out.shape[:-1], 2, 2).float()


def apply_rope(xq: Tensor, xk: Tensor, freqs_cis: Tensor) -> tuple[Tensor, Tensor]:
    xq_ = xq.float().reshape(*xq.shape[:-1], -1, 1, 2)
    xk_ = xk.float().reshape(*xk.shape[:-1], -1, 1, 2)
    xq_out = freqs_cis[..., 0] * xq_[..., 0] + freqs_cis[..., 1] * xq_[..., 1]
    xk_out = freqs_cis[..., 0] * xk_[..., 0] + freqs_cis[..., 1] * xk_[..., 1]
    return xq_out.reshape(*xq.shape).type_as(xq), xk_out.reshape(*xk.shape).type_as(xk)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pe: Tensor,
    mask: Optional[Tensor] = None,
    transformer_options: Optional[dict] = None,
) -> Tensor:
    """Joint attention ``[B, H, L, D] -> [B, L, H*D]`` with RoPE applied to q and k."""
    q, k = apply_rope(q, k, pe)
    x = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return rearrange(x, "B H L D -> B L (H D)")


def timestep_embedding(t: Tensor, dim: int, max_period: int = 10000, time_factor: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of ``t`` in [0, 1] (scaled by ``time_factor``), as in FLUX."""
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    if torch.is_floating_point(t):
        embedding = embedding.to(t)
    return embedding


def modulate(x: Tensor, mod) -> Tensor:
    """``(1 + mod.scale) * x + mod.shift`` as one ``addcmul``, the way ComfyUI's FLUX blocks
    compute it, so a QBA block over one map matches the host bit for bit."""
    return torch.addcmul(mod.shift, x, 1 + mod.scale)

"""A compact FLUX.1 transformer with the BFL parameter names.

Used by training, tests, the demo and the benchmarks. Its blocks have the attribute names
of the BFL reference (and of ComfyUI's ``comfy.ldm.flux.layers``), so the QBA functions of
:mod:`lumix_core.model.qba` run on them unchanged; the model itself holds no LumiX maths. With no
adapter attached it is plain FLUX; with one attached every block goes through QBA.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from ..maps import MapSet
from . import flux_math
from .adapter import LumiXAdapter
from .qba import double_block_forward, single_block_forward


@dataclass(frozen=True)
class FluxConfig:
    in_channels: int = 64
    out_channels: int = 64
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: int = 10_000
    qkv_bias: bool = True
    guidance_embed: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if sum(self.axes_dim) != self.hidden_size // self.num_heads:
            raise ValueError(f"axes_dim {self.axes_dim} must sum to the head dim {self.hidden_size // self.num_heads}")

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["axes_dim"] = list(self.axes_dim)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FluxConfig":
        d = dict(d)
        d["axes_dim"] = tuple(d["axes_dim"])
        return cls(**d)


FLUX_DEV = FluxConfig()
FLUX_SCHNELL = replace(FLUX_DEV, guidance_embed=False)


def tiny_config(hidden_size: int = 64, num_heads: int = 2, depth: int = 2, depth_single_blocks: int = 2,
                in_channels: int = 64, context_in_dim: int = 32, vec_in_dim: int = 16,
                guidance_embed: bool = True) -> FluxConfig:
    """A FLUX-shaped config small enough for CPU tests (head dim split 1/4, 3/8, 3/8 like FLUX)."""
    head = hidden_size // num_heads
    a0 = head // 8 * 2
    a1 = (head - a0) // 2
    return FluxConfig(in_channels=in_channels, out_channels=in_channels, vec_in_dim=vec_in_dim,
                      context_in_dim=context_in_dim, hidden_size=hidden_size, num_heads=num_heads,
                      depth=depth, depth_single_blocks=depth_single_blocks,
                      axes_dim=(a0, a1, head - a0 - a1), guidance_embed=guidance_embed)


# ---------------------------------------------------------------------------------- layers
class EmbedND(nn.Module):
    def __init__(self, dim: int, theta: int, axes_dim: tuple[int, ...]) -> None:
        super().__init__()
        self.dim, self.theta, self.axes_dim = dim, theta, list(axes_dim)

    def forward(self, ids: Tensor) -> Tensor:
        n_axes = ids.shape[-1]
        emb = torch.cat([flux_math.rope(ids[..., i], self.axes_dim[i], self.theta) for i in range(n_axes)], dim=-3)
        return emb.unsqueeze(1)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x_dtype = x.dtype
        x = x.float()
        rrms = torch.rsqrt(torch.mean(x**2, dim=-1, keepdim=True) + 1e-6)
        return (x * rrms).to(dtype=x_dtype) * self.scale.to(x_dtype)


class QKNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


@dataclass
class ModulationOut:
    shift: Tensor
    scale: Tensor
    gate: Tensor


class Modulation(nn.Module):
    def __init__(self, dim: int, double: bool) -> None:
        super().__init__()
        self.is_double = double
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec: Tensor) -> tuple[ModulationOut, Optional[ModulationOut]]:
        out = self.lin(nn.functional.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        return ModulationOut(*out[:3]), ModulationOut(*out[3:]) if self.is_double else None


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        for side in ("img", "txt"):
            setattr(self, f"{side}_mod", Modulation(hidden_size, double=True))
            setattr(self, f"{side}_norm1", _layer_norm(hidden_size))
            setattr(self, f"{side}_attn", SelfAttention(hidden_size, num_heads, qkv_bias))
            setattr(self, f"{side}_norm2", _layer_norm(hidden_size))
            setattr(self, f"{side}_mlp", nn.Sequential(
                nn.Linear(hidden_size, mlp_hidden_dim, bias=True),
                nn.GELU(approximate="tanh"),
                nn.Linear(mlp_hidden_dim, hidden_size, bias=True),
            ))

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor,
                attn_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Plain FLUX (BFL reference); the LumiX path is :func:`lumix_core.model.qba.double_block_forward`."""
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        img_modulated = flux_math.modulate(self.img_norm1(img), img_mod1)
        img_q, img_k, img_v = flux_math.split_heads(self.img_attn.qkv(img_modulated), self.num_heads)
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)
        txt_modulated = flux_math.modulate(self.txt_norm1(txt), txt_mod1)
        txt_q, txt_k, txt_v = flux_math.split_heads(self.txt_attn.qkv(txt_modulated), self.num_heads)
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)
        q = torch.cat((txt_q, img_q), dim=2)
        k = torch.cat((txt_k, img_k), dim=2)
        v = torch.cat((txt_v, img_v), dim=2)
        del img_q, img_k, img_v, txt_q, txt_k, txt_v
        attn = flux_math.attention(q, k, v, pe=pe, mask=attn_mask)
        del q, k, v
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]
        img = img + img_mod1.gate * self.img_attn.proj(img_attn)
        img = img + img_mod2.gate * self.img_mlp(flux_math.modulate(self.img_norm2(img), img_mod2))
        txt = txt + txt_mod1.gate * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod2.gate * self.txt_mlp(flux_math.modulate(self.txt_norm2(txt), txt_mod2))
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = _layer_norm(hidden_size)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x: Tensor, vec: Tensor, pe: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        """Plain FLUX (BFL reference); the LumiX path is :func:`lumix_core.model.qba.single_block_forward`."""
        mod, _ = self.modulation(vec)
        x_mod = flux_math.modulate(self.pre_norm(x), mod)
        qkv, mlp = torch.split(self.linear1(x_mod), [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = flux_math.split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = flux_math.attention(q, k, v, pe=pe, mask=attn_mask)
        del q, k, v, qkv
        output = self.linear2(torch.cat((attn, self.mlp_act(mlp)), 2))
        return x + mod.gate * output


class LastLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = _layer_norm(hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        x = (1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :]
        return self.linear(x)


# ----------------------------------------------------------------------------------- model
@dataclass
class AttachedAdapter:
    """An adapter attached to a :class:`Flux` and how it is applied."""

    adapter: LumiXAdapter
    strength: float = 1.0
    share_query: bool = True

    @property
    def maps(self) -> MapSet:
        return self.adapter.maps


class Flux(nn.Module):
    """FLUX.1 transformer on packed tokens (``img [B, L, in_channels]``), BFL names."""

    def __init__(self, config: FluxConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.in_channels = c.in_channels
        self.out_channels = c.out_channels
        self.hidden_size = c.hidden_size
        self.num_heads = c.num_heads
        self.pe_embedder = EmbedND(dim=c.hidden_size // c.num_heads, theta=c.theta, axes_dim=c.axes_dim)
        self.img_in = nn.Linear(c.in_channels, c.hidden_size, bias=True)
        self.time_in = MLPEmbedder(256, c.hidden_size)
        self.vector_in = MLPEmbedder(c.vec_in_dim, c.hidden_size)
        self.guidance_in = MLPEmbedder(256, c.hidden_size) if c.guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(c.context_in_dim, c.hidden_size)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c.qkv_bias) for _ in range(c.depth))
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth_single_blocks))
        self.final_layer = LastLayer(c.hidden_size, 1, c.out_channels)
        self._lumix: Optional[AttachedAdapter] = None
        self.gradient_checkpointing = False
        #: Streams blocks kept on the CPU to the device around their use (``lumix_core.train.block_swap``).
        self.block_swap = None

    # -- adapters ------------------------------------------------------------------------
    @property
    def lumix(self) -> Optional[AttachedAdapter]:
        return self._lumix

    def attach(self, adapter: LumiXAdapter, strength: float = 1.0, share_query: bool = True) -> None:
        """Run every block through QBA with ``adapter``; the backbone's weights are untouched."""
        spec = adapter.spec
        if spec.hidden != self.hidden_size:
            raise ValueError(f"adapter hidden size {spec.hidden} does not match the model's {self.hidden_size}")
        for kind, indices, n in (("double", spec.double_blocks, len(self.double_blocks)),
                                 ("single", spec.single_blocks, len(self.single_blocks))):
            bad = [i for i in indices if i >= n]
            if bad:
                raise ValueError(f"adapter has {kind} block {bad[0]} but the model has only {n} {kind} blocks")
        self._lumix = AttachedAdapter(adapter, strength, share_query)

    def detach(self) -> Optional[LumiXAdapter]:
        attached, self._lumix = self._lumix, None
        return None if attached is None else attached.adapter

    @contextmanager
    def attached(self, adapter: LumiXAdapter, strength: float = 1.0, share_query: bool = True) -> Iterator[None]:
        previous = self._lumix
        self.attach(adapter, strength, share_query)
        try:
            yield
        finally:
            self._lumix = previous

    # -- forward -------------------------------------------------------------------------
    def _run(self, block: nn.Module, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, the call of ``block``: recomputed in backward with gradient
        checkpointing, its weights streamed in by :attr:`block_swap` where that holds the block."""
        checkpoint = self.gradient_checkpointing and torch.is_grad_enabled()
        if self.block_swap is not None and self.block_swap.holds(block):
            return self.block_swap.run(block, fn, args, kwargs, checkpoint)
        if checkpoint:
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, **kwargs)
        return fn(*args, **kwargs)

    def forward(
        self,
        img: Tensor,
        img_ids: Tensor,
        txt: Tensor,
        txt_ids: Tensor,
        timesteps: Tensor,
        y: Tensor,
        guidance: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """Velocity for packed latents. ``timesteps`` and ``guidance`` are per batch item.

        With an adapter attached the batch must be whole groups of its map count.
        """
        if img.ndim != 3 or txt.ndim != 3:
            raise ValueError("img and txt must be [batch, tokens, channels] tensors")
        img = self.img_in(img)
        vec = self.time_in(flux_math.timestep_embedding(timesteps, 256).to(img.dtype))
        if self.config.guidance_embed:
            if guidance is None:
                raise ValueError("this FLUX (dev) needs a guidance value")
            vec = vec + self.guidance_in(flux_math.timestep_embedding(guidance, 256).to(img.dtype))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))

        lumix = self._lumix
        if lumix is None:
            for block in self.double_blocks:
                img, txt = self._run(block, block, img, txt, vec, pe, attn_mask)
            x = torch.cat((txt, img), dim=1)
            for block in self.single_blocks:
                x = self._run(block, block, x, vec, pe, attn_mask)
        else:
            common = dict(group=lumix.maps.size, query_index=lumix.maps.query_index, attn_mask=attn_mask,
                          strength=lumix.strength, share_query=lumix.share_query)
            for i, block in enumerate(self.double_blocks):
                img, txt = self._run(block, double_block_forward, block, img, txt, vec, pe,
                                     adapter=lumix.adapter.for_double(i), **common)
            x = torch.cat((txt, img), dim=1)
            for i, block in enumerate(self.single_blocks):
                x = self._run(block, single_block_forward, block, x, vec, pe,
                              adapter=lumix.adapter.for_single(i), **common)
        img = x[:, txt.shape[1]:, ...]
        return self.final_layer(img, vec)

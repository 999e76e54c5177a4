"""Tensor LoRA: one low-rank adapter whose output for map *i* reads the inputs of all maps.

Published formula (LumiX, factors ``G1[M,M,R]``, ``G2[M,d_in,R,R]``, ``G3[M,d_out,R]``)::

    Y[i,l,o] = s * sum_{j,u,r,q} X[j,l,u] G2[i,u,r,q] G1[i,j,q] G3[i,o,r]
    s = (alpha or 1) / sqrt(R) * strength

The release evaluates it left to right, materialising ``[M,M,L,R,R]`` and then
``[M,M,L,d_out]`` intermediates. We contract the weights first::

    W[j,u,i,r] = sum_q G2[i,u,r,q] G1[i,j,q]            ([M*d_in, M*R], tiny)
    Z[l,i,r]   = sum_{j,u} X[j,l,u] W[j,u,i,r]           (one GEMM over all maps of a token)
    Y[i,l,o]   = s * sum_r Z[l,i,r] G3[i,o,r]             (batched rank-R expansion)

which is ~R times fewer FLOPs and never allocates anything larger than the consumer's own
output. The expansion is added *in place* into the consumer (K/V or the projection
output), so no ``[M, L, d_out]`` delta is allocated either.

Activations keep their dtype: the factors are contracted in fp32 (they are small) and the
resulting ``W`` / ``G3`` are cast to the activation dtype; matmuls in bf16/fp16 accumulate in
fp32 inside the kernels.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .maps import check_group_batch


class TensorLoRA(nn.Module):
    """Factors and fast evaluation of one Tensor LoRA adapter (``d_in -> d_out`` over ``M`` maps).

    Inputs are laid out as consecutive groups of ``M`` maps along the batch dimension:
    ``x[g*M + j]`` is map ``j`` of scene group ``g``.
    """

    def __init__(
        self,
        num_maps: int,
        in_features: int,
        out_features: int,
        rank: int = 8,
        alpha: Optional[float] = None,
        *,
        device=None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.num_maps = int(num_maps)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.rank = int(rank)
        self.alpha = None if alpha is None else float(alpha)
        M, R = self.num_maps, self.rank
        self.G1 = nn.Parameter(torch.empty(M, M, R, device=device, dtype=dtype))
        self.G2 = nn.Parameter(torch.empty(M, in_features, R, R, device=device, dtype=dtype))
        self.G3 = nn.Parameter(torch.empty(M, out_features, R, device=device, dtype=dtype))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Published init: G1 ~ N(0, 0.02²), G2 ~ N(0, 1/(d_in R)), G3 = 0 (a no-op adapter)."""
        if self.G1.device.type == "meta":
            return
        self.G1.copy_(torch.randn(self.G1.shape, generator=generator) * 0.02)
        self.G2.copy_(torch.randn(self.G2.shape, generator=generator) / math.sqrt(self.in_features * self.rank))
        self.G3.zero_()

    def scale(self, strength: float = 1.0) -> float:
        """``s = (alpha or 1) / sqrt(R) * strength``."""
        return (self.alpha if self.alpha is not None else 1.0) / math.sqrt(self.rank) * float(strength)

    def extra_repr(self) -> str:
        return (
            f"maps={self.num_maps}, in={self.in_features}, out={self.out_features}, "
            f"rank={self.rank}, alpha={self.alpha}"
        )

    # -- fast path -----------------------------------------------------------------------
    def mixing_matrix(self, dtype: torch.dtype) -> Tensor:
        """``W`` as ``[M(j), d_in, M(i)*R]``: every map's features -> every map's rank codes."""
        G1 = self.G1.float()
        G2 = self.G2.float()
        W = torch.einsum("iurq,ijq->juir", G2, G1)  # [j, u, i, r]
        return W.reshape(self.num_maps, self.in_features, self.num_maps * self.rank).to(dtype)

    def codes(self, x: Tensor) -> Tensor:
        """Low-rank codes ``Z`` as ``[G, M(i), L, R]`` for ``x`` of shape ``[G*M, L, d_in]``.

        Computed as one batched GEMM over the M input maps followed by a sum over them; the
        ``[G, M(j), L, M*R]`` partial products are small (``M*R`` per token and map).
        """
        M, R = self.num_maps, self.rank
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Tensor LoRA expects {self.in_features} input features, got {x.shape[-1]}"
            )
        G = check_group_batch(x.shape[0], M)
        L = x.shape[1]
        W = self.mixing_matrix(x.dtype)
        parts = torch.matmul(x.reshape(G, M, L, self.in_features), W)  # [G, j, L, i*R]
        Z = parts.sum(dim=1)  # [G, L, i*R]
        return Z.reshape(G, L, M, R).permute(0, 2, 1, 3)  # [G, i, L, R]

    def _expansion(self, dtype: torch.dtype, rows: slice) -> Tensor:
        """``G3[:, rows]`` as ``[M, R, n_rows]`` in the activation dtype."""
        return self.G3[:, rows].to(dtype).transpose(1, 2)

    def delta(self, z: Tensor, dtype: torch.dtype, strength: float = 1.0, rows: slice = slice(None)) -> Tensor:
        """Adapter output features ``rows`` as a fresh ``[G*M, L, n_rows]`` tensor.

        Used where autograd forbids in-place updates (training); inference uses the ``*_``
        variants that write straight into the consumer.
        """
        G, M, L, R = z.shape
        out = torch.matmul(z.to(dtype), self._expansion(dtype, rows)) * self.scale(strength)
        return out.reshape(G * M, L, -1)

    def add_delta_(self, out: Tensor, z: Tensor, strength: float = 1.0, rows: slice = slice(None)) -> Tensor:
        """Add adapter output features ``rows`` into ``out`` (``[G*M, L, n_rows]``) in place."""
        G, M, L, R = z.shape
        g3 = self._expansion(out.dtype, rows)  # [M, R, n]
        out_g = out.unflatten(0, (G, M))
        zc = z.to(out.dtype)
        s = self.scale(strength)
        for g in range(G):
            out_g[g].baddbmm_(zc[g], g3, alpha=s)
        return out

    def add_heads_delta_(
        self, out: Tensor, z: Tensor, strength: float = 1.0, rows: slice = slice(None)
    ) -> Tensor:
        """Add output features ``rows`` into a head-split ``out`` ``[G*M, H, L, Dh]`` in place.

        Feature ``h*Dh + e`` of the adapter output goes to ``out[:, h, :, e]`` (FLUX's
        ``"B L (H D) -> B H L D"`` split). ``out`` may be a strided view (V is a view of the
        fused QKV projection), so the update runs per group and head on views of it.
        """
        G, M, L, R = z.shape
        GM, H, L2, Dh = out.shape
        if L2 != L or GM != G * M:
            raise ValueError(f"head delta shape mismatch: out {tuple(out.shape)}, codes {tuple(z.shape)}")
        g3 = self._expansion(out.dtype, rows).unflatten(2, (H, Dh))  # [M, R, H, Dh]
        zc = z.to(out.dtype)
        s = self.scale(strength)
        out_g = out.unflatten(0, (G, M))  # [G, M, H, L, Dh]
        for g in range(G):
            for h in range(H):
                out_g[g, :, h].baddbmm_(zc[g], g3[:, :, h], alpha=s)
        return out

    def forward(self, x: Tensor, strength: float = 1.0) -> Tensor:
        """The adapter output ``[G*M, L, d_out]`` as a fresh tensor (tests, training, benches).

        Inference in the blocks uses :meth:`codes` + :meth:`add_delta_` instead, to avoid
        the allocation.
        """
        return self.delta(self.codes(x), x.dtype, strength)

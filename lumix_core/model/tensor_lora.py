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

Each step is a fixed number of batched operations over all ``G*M`` items (and all heads),
never a loop over groups or heads: on a GPU every dispatched operation costs a launch, and
FLUX.1-dev runs 114 adapters per model call (``bench/bench_dispatch.py``).

Activations keep their dtype: the factors are contracted in fp32 (they are small) and the
resulting ``W`` / ``G3`` are cast to the activation dtype; matmuls in bf16/fp16 accumulate in
fp32 inside the kernels. At inference (frozen factors, no grad) those prepared tensors are
cached per device and dtype (:meth:`TensorLoRA._prepared`).

``strength`` is a Python number or a 0-dim tensor. A number goes into the GEMM's ``alpha``
(no extra operation); a tensor scales the rank-R codes instead, so that a ``torch.compile``
graph reads the strength at run time rather than baking a constant into the graph.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from einops import rearrange
from torch import Tensor, nn

from ..maps import check_group_batch


def _version_or_none(t: Tensor) -> Optional[int]:
    """The in-place version counter, or None where there is none (inference tensors, also wrapped)."""
    try:
        return t._version
    except RuntimeError:
        return None


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
        self._cache: dict[tuple, tuple[tuple, Tensor]] = {}  # see _prepared
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

    def _scaled_codes(self, z: Tensor, dtype: torch.dtype, strength: "float | Tensor") -> tuple[Tensor, float]:
        """``(codes in dtype, GEMM alpha)`` with ``s`` applied once: in alpha, or on the codes for a tensor strength."""
        z = z.to(dtype)
        if isinstance(strength, Tensor):
            return z * (strength.to(device=z.device, dtype=dtype) * self.scale()), 1.0
        return z, self.scale(strength)

    def extra_repr(self) -> str:
        return (
            f"maps={self.num_maps}, in={self.in_features}, out={self.out_features}, "
            f"rank={self.rank}, alpha={self.alpha}"
        )

    # -- prepared factors ----------------------------------------------------------------
    def _prepared(self, what: tuple, device: torch.device, dtype: torch.dtype, build: Callable[[], Tensor]) -> Tensor:
        """``build()`` (a tensor derived from the factors, on ``device`` in ``dtype``), cached at inference.

        Why: contracting ``W`` and casting/re-laying ``G3`` is a handful of dispatched operations
        per adapter and call; over FLUX.1-dev's 57 blocks and every sampling step that is
        launch overhead a GPU feels. The cache is used only when nothing can train the factors
        (grad mode off and no factor requiring grad), and each entry is keyed by the factors'
        storage and version counters, so in-place edits (``copy_``, ``load_state_dict``) and
        moves (``.to``) invalidate it. Trainable factors always get a fresh, differentiable
        build and clear the cache: optimizers with fused kernels update parameters without
        bumping their version counters, so a trained factor must never be served from it.
        Factors created under ``torch.inference_mode()`` (ComfyUI runs its nodes there) have no
        version counter: they are keyed by storage alone, so an in-place edit of them inside
        inference mode needs :meth:`clear_cache` (nothing in this project does that).
        While ``torch.compile`` traces, the cache is bypassed: its keys (storage pointers, version
        counters) are Python values a graph would bake in, and the build is a few small ops.
        """
        if torch.compiler.is_compiling():
            return build()  # traced into the graph: the factors are graph inputs, nothing to cache
        params = (self.G1, self.G2, self.G3)
        if any(p.requires_grad for p in params):
            self._cache.clear()
            return build()
        if torch.is_grad_enabled():
            return build()
        key = (device, dtype, *((p.data_ptr(), _version_or_none(p)) for p in params))
        hit = self._cache.get(what)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = build()
        self._cache[what] = (key, value)
        return value

    def clear_cache(self) -> None:
        """Drop the prepared factors (they are rebuilt on the next inference call)."""
        self._cache.clear()

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .half(): entries on the old device or dtype would only hold memory
        self._cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def mixing_matrix(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``W`` as ``[M(j), d_in, M(i)*R]``: every map's features -> every map's rank codes.

        Contracted in float32 (the factors may be fp8 or bf16), then cast to the activations'
        dtype.
        """
        def build() -> Tensor:
            W = torch.einsum("iurq,ijq->juir", self.G2.float(), self.G1.float())  # [j, u, i, r]
            return W.reshape(self.num_maps, self.in_features, self.num_maps * self.rank).to(device, dtype)

        return self._prepared(("W",), device, dtype, build)

    def expansion(self, device: torch.device, dtype: torch.dtype, rows: slice = slice(None), heads: int = 0) -> Tensor:
        """``G3[:, rows]`` laid out for the batched rank-R expansion, in the activations' dtype.

        ``heads=0``: ``[M, R, n_rows]`` (token layout, output feature ``o``).
        ``heads=H``: ``[M*H, R, Dh]``, batch ``(i, h)``: feature ``h*Dh + e`` of map ``i`` (FLUX's
        ``"(H D)"`` split), for outputs laid out ``[.., H, L, Dh]``.
        """
        def build() -> Tensor:
            g3 = self.G3[:, rows].to(device, dtype)  # [M, n, R]
            if not heads:
                return g3.transpose(1, 2).contiguous()
            return rearrange(g3, "M (H D) R -> (M H) R D", H=heads)

        return self._prepared(("G3", rows.start, rows.stop, rows.step, heads), device, dtype, build)

    # -- fast path -----------------------------------------------------------------------
    def codes(self, x: Tensor) -> Tensor:
        """Low-rank codes ``Z`` as a contiguous ``[G, M(i), L, R]`` for ``x`` of shape ``[G*M, L, d_in]``.

        One batched GEMM over the ``G*M`` input items (``W`` repeated per group: it is small),
        a sum over the input maps ``j`` and one re-layout copy; a fixed number of operations
        whatever the group count. The ``[G, M(j), L, M*R]`` partial products are small.
        """
        M, R = self.num_maps, self.rank
        if x.ndim != 3 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Tensor LoRA expects [batch, tokens, {self.in_features}] inputs, got {tuple(x.shape)}"
            )
        G = check_group_batch(x.shape[0], M)
        L = x.shape[1]
        W = self.mixing_matrix(x.device, x.dtype)
        parts = torch.bmm(x, W.repeat(G, 1, 1))  # [G*M(j), L, M(i)*R]
        # "(G j) L (i R) -> G L i R", summed over the input maps j. A plain view: einops.reduce
        # would add a permute to every call, and the operation count per block is fixed.
        Z = parts.view(G, M, L, M, R).sum(dim=1)  # [G, L, M(i), R]
        return torch.permute_copy(Z, (0, 2, 1, 3))  # [G, M(i), L, R], contiguous

    def delta(
        self, z: Tensor, dtype: torch.dtype, strength: "float | Tensor" = 1.0, rows: slice = slice(None)
    ) -> Tensor:
        """Adapter output features ``rows`` as a fresh ``[G*M, L, n_rows]`` tensor.

        Used where autograd forbids in-place updates (training); inference uses the ``*_``
        variants that write straight into the consumer.
        """
        G, M, L, R = z.shape
        g3 = self.expansion(z.device, dtype, rows)  # [M, R, n]
        codes, alpha = self._scaled_codes(z, dtype, strength)
        out = torch.matmul(codes, g3) * alpha  # [G, M, L, n]
        return out.reshape(G * M, L, -1)

    def add_delta_(self, out: Tensor, z: Tensor, strength: "float | Tensor" = 1.0, rows: slice = slice(None)) -> Tensor:
        """Add adapter output features ``rows`` into ``out`` (``[G*M, L, n_rows]``, any strides) in place.

        One ``baddbmm_`` over all ``G*M`` items (``G3`` repeated per group: it is small).
        """
        G, M, L, R = z.shape
        g3 = self.expansion(out.device, out.dtype, rows)  # [M, R, n]
        codes, alpha = self._scaled_codes(z, out.dtype, strength)
        out.baddbmm_(codes.view(G * M, L, R), g3.repeat(G, 1, 1), alpha=alpha)
        return out

    def add_heads_delta_(
        self, out: Tensor, z: Tensor, strength: "float | Tensor" = 1.0, rows: slice = slice(None)
    ) -> Tensor:
        """Add output features ``rows`` into a head-split ``out`` ``[G*M, H, L, Dh]`` in place.

        Feature ``h*Dh + e`` of the adapter output goes to ``out[:, h, :, e]`` (FLUX's
        ``"B L (H D) -> B H L D"`` split). One batched GEMM whatever the head count, chosen by
        ``out``'s strides: token-major (V, a view of the fused QKV output: ``[B, L, H*Dh]``
        underneath) takes the token layout; head-major (K after QK-norm: ``[B*H, L, Dh]``
        underneath) a per-head batch with the codes repeated per head (``R`` values per token
        and head, small); any other layout gets the delta added from a fresh tensor.
        """
        G, M, L, R = z.shape
        B, H, L2, Dh = out.shape
        if L2 != L or B != G * M:
            raise ValueError(f"head delta shape mismatch: out {tuple(out.shape)}, codes {tuple(z.shape)}")
        s0, s1, _, s3 = out.stride()
        if s1 == Dh * s3:  # token-major: (H, Dh) merge into one feature axis
            self.add_delta_(out.transpose(1, 2).flatten(2), z, strength, rows)
        elif s0 == H * s1:  # head-major: (B, H) merge into one batch axis
            g3 = self.expansion(out.device, out.dtype, rows, heads=H)  # [M*H, R, Dh]
            codes, alpha = self._scaled_codes(z, out.dtype, strength)
            zh = codes.repeat(1, 1, H, 1).view(B * H, L, R)  # batch (g, i, h)
            out.view(B * H, L, Dh).baddbmm_(zh, g3.repeat(G, 1, 1), alpha=alpha)
        else:
            out.add_(self.delta(z, out.dtype, strength, rows).view(B, L, H, Dh).transpose(1, 2))
        return out

    def forward(self, x: Tensor, strength: float = 1.0) -> Tensor:
        """The adapter output ``[G*M, L, d_out]`` as a fresh tensor (tests, training, benches).

        Inference in the blocks uses :meth:`codes` + :meth:`add_delta_` instead, to avoid
        the allocation.
        """
        return self.delta(self.codes(x), x.dtype, strength)

"""Frozen linear layers stored as float8 (e4m3fn) with one scale per tensor.

Why: FLUX.1-dev's frozen weights take 22 GiB in bf16 and half that in fp8, which is what lets
a 24 GB card train an adapter. A layer casts its weight to the compute dtype inside its forward,
and its autograd function saves only the fp8 weight and the scale for backward (the cast is
redone there), so no compute-dtype copy of a weight outlives the layer's call.

The value of a stored weight is ``weight.to(dtype) * scale.to(dtype)``, the formula ComfyUI uses
for its scaled-fp8 files, so weights read from such a file give the host's numbers. Weights
quantized here get a power-of-two scale, which makes that product exact in every dtype.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FP8 = torch.float8_e4m3fn
#: Largest finite float8_e4m3fn value.
FP8_MAX = 448.0


def fp8_scale(weight: Tensor) -> float:
    """The smallest power of two ``s`` with ``max|weight| / s <= 448`` (1 for an all-zero tensor).

    A power of two rather than ``amax / 448``: dividing by it and multiplying back are exact, so
    quantizing only rounds to fp8 and the stored value is the same in bf16, fp16 or fp32 compute.
    """
    amax = float(weight.detach().abs().max()) if weight.numel() else 0.0
    if not math.isfinite(amax):
        raise ValueError("cannot quantize a weight that holds inf or nan; the weights file is damaged")
    if amax == 0.0:
        return 1.0
    mantissa, exponent = math.frexp(amax / FP8_MAX)  # amax / 448 = mantissa * 2**exponent, mantissa in [0.5, 1)
    scale = math.ldexp(1.0, exponent - 1 if mantissa == 0.5 else exponent)
    return scale * 2 if amax / scale > FP8_MAX else scale


def quantize(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(fp8 weight, float32 scale of shape [])`` on ``weight``'s device; rounds to nearest."""
    scale = fp8_scale(weight)
    q = (weight.detach().float() / scale).to(FP8)  # exact division (power of two), then the one rounding
    return q, torch.tensor(scale, dtype=torch.float32, device=weight.device)


def dequantize(weight: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """The weight's value in ``dtype``: ``weight.to(dtype) * scale.to(dtype)`` (ComfyUI's formula)."""
    return weight.to(dtype, copy=True).mul_(scale.to(dtype))  # copy: never scale a caller's tensor in place


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4 has one function per device
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        if device_type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
    return None


class _Fp8LinearFunction(torch.autograd.Function):
    """``y = x W^T + b`` with ``W = dequantize(weight, scale)``; backward gives ``dL/dx = dL/dy W`` only.

    The weight and bias are frozen, so there is no weight or bias gradient, and the input need not
    be saved: backward keeps just the fp8 weight and its scale and casts the weight again.
    Dtypes are explicit (not left to autocast), so the result is the same inside or outside
    ``torch.autocast`` and whatever autocast state backward runs under.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, scale: Tensor, bias: Optional[Tensor], dtype: torch.dtype) -> Tensor:
        ctx.save_for_backward(weight, scale)
        ctx.dtype, ctx.input_dtype = dtype, x.dtype
        b = None if bias is None else bias.to(dtype)
        return F.linear(x.to(dtype), dequantize(weight, scale, dtype), b)  # [..., in] -> [..., out]

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        weight, scale = ctx.saved_tensors
        grad_x = grad_out.to(ctx.dtype).matmul(dequantize(weight, scale, ctx.dtype))  # [..., out] @ [out, in]
        return grad_x.to(ctx.input_dtype), None, None, None, None


class Fp8Linear(nn.Module):
    """A frozen ``nn.Linear`` whose weight is float8_e4m3fn times ``scale_weight`` (float32, shape []).

    The compute dtype is autocast's where autocast is on for the input's device, else the
    input's dtype; the bias stays in the dtype it was given. The parameter names are
    ComfyUI's scaled-fp8 ones (``weight``, ``scale_weight``), so a state dict of these layers
    is laid out like the scaled-fp8 FLUX files. ``module.to(dtype)`` would cast the fp8
    weight too: move these layers between devices only.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 device: "torch.device | str | None" = None, bias_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=FP8, device=device),
                                   requires_grad=False)
        self.register_buffer("scale_weight", torch.ones((), dtype=torch.float32, device=device))
        self.bias = (nn.Parameter(torch.zeros(out_features, dtype=bias_dtype, device=device), requires_grad=False)
                     if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, values: bool = True) -> "Fp8Linear":
        """The layer quantized (``values=False``: only its shape, for a loader to fill, e.g. on ``meta``)."""
        w = linear.weight
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, device=w.device,
                  bias_dtype=w.dtype if linear.bias is None else linear.bias.dtype)
        if values:
            q, scale = quantize(w)
            out.weight = nn.Parameter(q, requires_grad=False)
            out.scale_weight = scale
            if linear.bias is not None:
                out.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return out

    def dequantized(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weight's value in ``dtype`` (what forward multiplies by)."""
        return dequantize(self.weight, self.scale_weight, dtype)

    def forward(self, x: Tensor) -> Tensor:
        dtype = _autocast_dtype(x.device.type) or x.dtype
        return _Fp8LinearFunction.apply(x, self.weight, self.scale_weight, self.bias, dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8"


def replace_linears_(module: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by ``make(linear)``; returns how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, make(child))
                count += 1
    return count


def replace_block_linears_(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> int:
    """:func:`replace_linears_` on FLUX's double and single blocks only (their linears hold 99.4 % of
    FLUX.1-dev's weights; the embedders and the final layer are left as they are)."""
    return sum(replace_linears_(block, make) for blocks in (model.double_blocks, model.single_blocks)
               for block in blocks)


def quantize_linears_(module: nn.Module, *, values: bool = True) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by an :class:`Fp8Linear`; returns how many.

    ``values=False`` swaps the modules without quantizing (fp8 zeros, scale 1), for a loader
    that fills them by assignment, e.g. on the meta device.
    """
    return replace_linears_(module, lambda linear: Fp8Linear.from_linear(linear, values=values))


def quantize_flux_blocks_(model: nn.Module, *, values: bool = True) -> int:
    """fp8 for the linears of FLUX's double and single blocks, 99.4 % of FLUX.1-dev's weights.

    The embedders and the final layer (64 M parameters) stay in the compute dtype: they are
    cheap to keep exact, and the timestep and guidance inputs pass through them.
    """
    return replace_block_linears_(model, lambda linear: Fp8Linear.from_linear(linear, values=values))


def fp8_weight_names(model: nn.Module) -> set[str]:
    """State-dict names of the fp8 weights in ``model`` (``double_blocks.0.img_attn.qkv.weight`` …)."""
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, Fp8Linear)}

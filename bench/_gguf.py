"""GGUF Q8_0 / Q4_0 linear layers that allocate what ComfyUI-GGUF allocates, for the memory bench.

ComfyUI-GGUF (city96) keeps a quantized weight on the device as its GGUF bytes (a ``uint8``
tensor) and dequantizes it inside every forward, right before the matmul (``GGMLOps.Linear``):
with the default ``dequant_dtype`` the blocks' fp16 scales times their integer quants make an
fp16 weight, which is cast to the input's dtype; that weight lives until the layer returns.
The bias, stored as F32 (the convert script keeps 1-D tensors in F32), is cast to the input's
dtype first. :func:`dequantize` runs the same sequence of operations, so under the storage
ledger it allocates the same temporaries (for Q4_0: the nibble shift, mask, int8 cast and
offset; for both: the fp16 weight, then the compute-dtype weight).

GGUF block layouts (``gguf.GGML_QUANT_SIZES``): Q8_0 is 32 weights in 34 bytes (fp16 scale +
32 int8), Q4_0 32 weights in 18 bytes (fp16 scale + 16 bytes of 4-bit quants, low nibbles
first, offset 8). Only the bytes' layout and the operations matter for memory; on real tensors
the values are what the format decodes to (``tests/test_bench_memory.py`` checks both).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lumix_core.model.fp8 import replace_block_linears_

#: qtype -> (weights per block, bytes per block)
QTYPES = {"q8_0": (32, 34), "q4_0": (32, 18)}


def quantized_bytes(rows: int, cols: int, qtype: str) -> int:
    """Bytes of a ``[rows, cols]`` weight stored as ``qtype``."""
    block, size = QTYPES[qtype]
    return rows * (cols // block) * size


def _fp16_blocks(blocks: Tensor, qtype: str) -> Tensor:
    """``[n_blocks, bytes]`` -> the fp16 weights ``[n_blocks, 32]`` (ComfyUI-GGUF's ``dequantize_blocks_*``:
    its temporaries die when this returns)."""
    block = QTYPES[qtype][0]
    n = blocks.shape[0]
    scale = blocks[:, :2].view(torch.float16)  # [n, 1]: a view
    if qtype == "q8_0":
        quants = blocks[:, 2:].view(torch.int8)  # [n, 32]: a view
    else:
        shifts = torch.tensor([0, 4], device=blocks.device, dtype=torch.uint8).reshape(1, 1, 2, 1)
        quants = blocks[:, 2:].reshape(n, -1, 1, block // 2) >> shifts  # [n, 1, 2, 16]: low, high nibbles
        quants = (quants & 0x0F).reshape(n, -1).to(torch.int8) - 8  # [n, 32]
    return scale * quants


def dequantize(data: Tensor, qtype: str, shape: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """``data`` (uint8 ``[rows, cols / 32 * bytes per block]``) -> the weight ``[rows, cols]`` in ``dtype``.

    The operations, in order and in the same function frames, of ComfyUI-GGUF's ``dequantize_tensor``
    with the default ``dequant_dtype``: the arithmetic runs in fp16 (the scales' dtype), the result is
    reshaped and then cast once, so the fp16 and the ``dtype`` weight coexist for the cast.
    """
    return _fp16_weight(data, qtype, shape).to(dtype)


def _fp16_weight(data: Tensor, qtype: str, shape: tuple[int, int]) -> Tensor:
    blocks = data.reshape(-1, QTYPES[qtype][1])  # [n_blocks, bytes]: a view
    return _fp16_blocks(blocks, qtype).reshape(shape)


class GgufLinear(nn.Module):
    """A frozen linear layer whose weight is GGUF bytes, dequantized per call as ComfyUI-GGUF does."""

    def __init__(self, in_features: int, out_features: int, bias: bool, qtype: str, *,
                 device: "torch.device | str | None" = None) -> None:
        super().__init__()
        block, size = QTYPES[qtype]
        if in_features % block:
            raise ValueError(f"{qtype} needs input features divisible by {block}, got {in_features}")
        self.in_features, self.out_features, self.qtype = in_features, out_features, qtype
        self.weight = nn.Parameter(torch.zeros(out_features, in_features // block * size, dtype=torch.uint8,
                                               device=device), requires_grad=False)
        self.bias: Optional[nn.Parameter] = (
            nn.Parameter(torch.zeros(out_features, dtype=torch.float32, device=device), requires_grad=False)
            if bias else None)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)  # ComfyUI-GGUF casts the bias first
        weight = dequantize(self.weight, self.qtype, (self.out_features, self.in_features), x.dtype)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.qtype}"


def quantize_flux_blocks_(model: nn.Module, qtype: str) -> int:
    """Every ``nn.Linear`` of FLUX's double and single blocks becomes a :class:`GgufLinear` (zero bytes).

    As city96's FLUX files are laid out: the block linears quantized; the embedders
    (``img_in``, ``txt_in``, ``time_in``, ``vector_in``, ``guidance_in``) and ``final_layer`` are
    not (the llama.cpp patch leaves them out). Returns how many layers were replaced.
    """
    return replace_block_linears_(model, lambda linear: GgufLinear(
        linear.in_features, linear.out_features, linear.bias is not None, qtype, device=linear.weight.device))

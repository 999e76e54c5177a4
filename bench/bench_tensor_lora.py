"""Tensor LoRA: fast (weights-first, fused in place) vs the release's literal contraction.

FLUX.1-dev shapes: d = 3072, M = 5, R = 8, L tokens per map; kv (d -> 2d) and proj (d -> d).
Prints per-call time of both, the speed-up, the max abs difference, and the peak memory of
the tensors each variant allocates (exact, counted by a torch dispatch mode).

    python bench/bench_tensor_lora.py [--tokens 1024] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import LiveTensorBytes, interleaved_times, mb  # noqa: E402

from lumix_core.model.tensor_lora import TensorLoRA  # noqa: E402

M, D, R = 5, 3072, 8


def literal(lora: TensorLoRA, x: torch.Tensor) -> torch.Tensor:
    """The published evaluation order: [M,M,L,R,R] then [M,M,L,d_out] intermediates."""
    B = torch.einsum("jlu,iurq->ijlrq", x, lora.G2)
    H = torch.einsum("ijlrq,ijq->ijlr", B, lora.G1)
    Y_all = torch.einsum("ijlr,ior->ijlo", H, lora.G3)
    return Y_all.sum(dim=1) * lora.scale()


def fast_into(lora: TensorLoRA, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """What the blocks do: codes, then the rank-R expansion added into the consumer in place."""
    return lora.add_delta_(out, lora.codes(x))


def make(kind: str, tokens: int):
    g = torch.Generator().manual_seed(0)
    d_out = 2 * D if kind == "kv" else D
    lora = TensorLoRA(M, D, d_out, R).requires_grad_(False)
    for p in (lora.G1, lora.G2, lora.G3):
        p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    x = torch.randn(M, tokens, D, generator=g)
    out = torch.randn(M, tokens, d_out, generator=g)  # the consumer's own tensor (K/V or proj output)
    return lora, x, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 on a machine with a busy core)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"Tensor LoRA, M={M}, d={D}, R={R}, L={a.tokens}, fp32, {torch.get_num_threads()} threads")
    print(f"{'kind':5} {'literal':>10} {'fast':>10} {'speed-up':>9} {'max|diff|':>10} "
          f"{'literal peak':>14} {'fast peak':>11} {'[M,M,L,d_out]':>14}")
    for kind in ("kv", "proj"):
        lora, x, out = make(kind, a.tokens)
        with torch.no_grad():
            ref = literal(lora, x)
            diff = (fast_into(lora, x, out.clone()) - out - ref).abs().max().item()
            times = interleaved_times({"literal": lambda: literal(lora, x),
                                       "fast": lambda: fast_into(lora, x, out)}, repeats=a.repeats)
            peaks = {"literal": LiveTensorBytes().measure(lambda: literal(lora, x)),
                     "fast": LiveTensorBytes().measure(lambda: fast_into(lora, x, out))}
        inter = M * M * a.tokens * out.shape[-1] * 4
        print(f"{kind:5} {times['literal'] * 1e3:8.1f}ms {times['fast'] * 1e3:8.1f}ms "
              f"{times['literal'] / times['fast']:8.1f}x {diff:10.2e} {mb(peaks['literal']):>14} "
              f"{mb(peaks['fast']):>11} {mb(inter):>14}")


if __name__ == "__main__":
    main()

"""A QBA + Tensor LoRA block vs the plain FLUX block on the same batch.

d = 1024, 8 heads by default (``--hidden 1536 --heads 24`` for FLUX.1-dev's head count at a
size a CPU runs), 1024 image + 128 text tokens, 2 scene groups of 5 maps (batch 10), rank 8,
double and single blocks, inference (no grad), fp32 on CPU. Prints the wall and CPU
time ratios and the peak memory of the tensors each variant allocates (exact, counted by a
torch dispatch mode; inputs and weights excluded).

    python bench/bench_qba_block.py [--repeats 5] [--img-tokens 1024] [--hidden 1024] [--heads 8]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import LiveTensorBytes, interleaved_times, mb  # noqa: E402

from lumix_core.latents import image_ids  # noqa: E402
from lumix_core.maps import RELEASE  # noqa: E402
from lumix_core.model.adapter import BlockLoRA, default_spec  # noqa: E402
from lumix_core.model.flux import DoubleStreamBlock, EmbedND, SingleStreamBlock, tiny_config  # noqa: E402
from lumix_core.model.qba import double_block_forward, single_block_forward  # noqa: E402

TXT, GROUPS, RANK = 128, 2, 8
M = RELEASE.size


def setup(kind: str, img_tokens: int, d: int, heads: int):
    torch.manual_seed(0)
    block = (DoubleStreamBlock(d, heads, 4.0, True) if kind == "double" else SingleStreamBlock(d, heads)).eval()
    block.requires_grad_(False)
    lora = BlockLoRA(default_spec(rank=RANK, hidden=d, double_blocks=1, single_blocks=1)).requires_grad_(False)
    for t in (lora.kv_tt_lora, lora.proj_tt_lora):
        t.G3.normal_(0, 0.02)
    B = GROUPS * M
    side = int(img_tokens ** 0.5)
    ids = torch.cat((torch.zeros(B, TXT, 3), image_ids(B, 2 * side, 2 * side)), dim=1)
    pe = EmbedND(d // heads, 10_000, tiny_config(d, heads).axes_dim)(ids)
    img, txt, vec = torch.randn(B, img_tokens, d), torch.randn(B, TXT, d), torch.randn(B, d)

    def plain():
        if kind == "double":
            return block(img, txt, vec, pe)
        return block(torch.cat((txt, img), 1), vec, pe)

    def lumix():
        kw = dict(group=M, query_index=RELEASE.query_index, adapter=lora)
        if kind == "double":
            return double_block_forward(block, img, txt, vec, pe, **kw)
        return single_block_forward(block, torch.cat((txt, img), 1), vec, pe, **kw)

    return plain, lumix


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--img-tokens", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 on a machine with a busy core)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"QBA + Tensor LoRA vs plain block: d={a.hidden}, {a.heads} heads, {a.img_tokens}+{TXT} tokens, "
          f"{GROUPS} groups x {M} maps, rank {RANK}, fp32, {torch.get_num_threads()} threads")
    print(f"{'block':7} {'plain':>9} {'lumix':>9} {'wall':>7} {'cpu':>7} {'plain peak':>12} {'lumix peak':>12} "
          f"{'memory':>7}")
    for kind in ("double", "single"):
        plain, lumix = setup(kind, a.img_tokens, a.hidden, a.heads)
        with torch.no_grad():
            t = interleaved_times({"plain": plain, "lumix": lumix}, repeats=a.repeats)
            cpu = interleaved_times({"plain": plain, "lumix": lumix}, repeats=a.repeats, clock=time.process_time)
            peaks = {"plain": LiveTensorBytes().measure(plain), "lumix": LiveTensorBytes().measure(lumix)}
        print(f"{kind:7} {t['plain'] * 1e3:7.0f}ms {t['lumix'] * 1e3:7.0f}ms {t['lumix'] / t['plain']:6.3f}x "
              f"{cpu['lumix'] / cpu['plain']:6.3f}x {mb(peaks['plain']):>12} {mb(peaks['lumix']):>12} "
              f"{peaks['lumix'] / peaks['plain']:6.3f}x")


if __name__ == "__main__":
    main()

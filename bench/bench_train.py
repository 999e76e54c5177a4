"""Training-step benchmark of the LumiX trainer, and a memory model for FLUX.1-dev.

Part 1 (measured): steps/s of the real training step (:class:`AdapterTrainingModule`,
:mod:`lumix_core.train.objective`, AdamW) on a tiny FLUX, with the time split into
forward / backward / optimizer, and the peak memory (CUDA: allocated bytes; CPU: growth
of the process's peak RSS).

Part 2 (``--dev-memory``): what FLUX.1-dev needs. One double and one single block are run
at full width on PyTorch's *meta* device (shapes only, no compute), and every tensor
autograd saves for backward is counted once per storage, leaving out views of weights.
Per-block numbers are exact for this code; the totals assemble them for 19 + 38 blocks
with and without gradient checkpointing, so they are an *estimate* of the peak, not a GPU
measurement (allocator slack and the CUDA context, ~1-3 GB, are not included). The meta
device runs attention through the math kernel, which keeps the ``L x L`` attention
weights; GPU flash / memory-efficient attention does not, so those are reported apart and
left out of the totals.

    python bench/bench_train.py [--steps 20] [--device cpu|cuda] [--checkpointing]
    python bench/bench_train.py --dev-memory [--size 512] [--maps 5] [--text-tokens 256]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import LiveTensorBytes  # noqa: E402

from lumix_core.latents import PATCH, VAE_FACTOR  # noqa: E402
from lumix_core.maps import RELEASE, MapSet  # noqa: E402
from lumix_core.model.adapter import BlockLoRA, LumiXAdapter, default_spec  # noqa: E402
from lumix_core.model.flux import FLUX_DEV, DoubleStreamBlock, Flux, SingleStreamBlock, tiny_config  # noqa: E402
from lumix_core.model.qba import double_block_forward, single_block_forward  # noqa: E402
from lumix_core.train.fit import AdapterTrainingModule  # noqa: E402
from lumix_core.train.objective import DrawSettings, draw_scene, make_noisy_batch, scene_losses  # noqa: E402

GiB = 2**30


# ------------------------------------------------------------------------ part 1: speed
def bench_steps(args) -> None:
    device = torch.device(args.device)
    maps = MapSet.parse(args.maps)
    torch.manual_seed(0)
    config = tiny_config(hidden_size=args.hidden, num_heads=args.heads, depth=args.depth,
                         depth_single_blocks=args.single, context_in_dim=32, vec_in_dim=16)
    model = Flux(config).to(device).requires_grad_(False)
    adapter = LumiXAdapter(default_spec(maps, args.rank, config.hidden_size, config.depth,
                                        config.depth_single_blocks)).to(device)
    adapter.reset_parameters()
    model.attach(adapter)
    model.gradient_checkpointing = args.checkpointing
    module = AdapterTrainingModule(model, adapter)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    B, side, C = args.batch, args.latent, 16
    x0 = torch.randn(B, maps.size, C, side, side, device=device)
    txt = torch.randn(B, args.text_tokens, 32, device=device)
    y = torch.randn(B, 16, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup + args.steps):
        draws = [draw_scene(0, step * B + b, (C, side, side), DrawSettings()) for b in range(B)]
        batch = make_noisy_batch(x0, draws, maps.query_index)
        sync()
        t0 = time.perf_counter()
        loss = scene_losses(module(batch.x_t, batch.t, txt, y, 1.0), batch).mean()
        sync()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        sync()
        t3 = time.perf_counter()
        if step >= args.warmup:
            times["forward"] += t1 - t0
            times["backward"] += t2 - t1
            times["optimizer"] += t3 - t2
    total = sum(times.values())
    print(f"tiny FLUX (hidden {config.hidden_size}, {config.depth}+{config.depth_single_blocks} blocks), "
          f"{B} scene(s) x {maps.size} maps, {side}x{side} latents ({(side // PATCH) ** 2} tokens/map), "
          f"{args.text_tokens} text tokens, rank {args.rank}, {device}, "
          f"checkpointing {'on' if args.checkpointing else 'off'}, {torch.get_num_threads()} thread(s)")
    print(f"  {args.steps / total:.2f} steps/s ({1000 * total / args.steps:.1f} ms/step): "
          + ", ".join(f"{k} {1000 * v / args.steps:.1f} ms ({100 * v / total:.0f}%)" for k, v in times.items()))
    if device.type == "cuda":
        print(f"  peak CUDA memory allocated: {torch.cuda.max_memory_allocated(device) / 2**20:.1f} MiB")
    else:  # one more step, counted exactly (RSS peaks move by tens of MB with the allocator's state)
        draws = [draw_scene(0, b, (C, side, side), DrawSettings()) for b in range(B)]
        batch = make_noisy_batch(x0, draws, maps.query_index)

        def one_step() -> None:
            opt.zero_grad(set_to_none=True)
            scene_losses(module(batch.x_t, batch.t, txt, y, 1.0), batch).mean().backward()
            opt.step()

        peak = LiveTensorBytes().measure(one_step)
        print(f"  peak live tensor memory of one step: {peak / 2**20:.1f} MiB "
              f"(adapter {sum(p.numel() for p in adapter.parameters()) / 1e3:.1f} k params)")


# -------------------------------------------------------------------- part 2: FLUX-dev
class SavedBytes:
    """Bytes autograd saves for backward, once per storage, without weight storages."""

    def __init__(self, exclude: list[torch.Tensor], seq_len: int) -> None:
        self.exclude = {t.untyped_storage()._cdata for t in exclude}
        self.seq_len = seq_len
        self.seen: set[int] = set()
        self.activations = 0
        self.attention_matrix = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s._cdata not in self.exclude and s._cdata not in self.seen:
            self.seen.add(s._cdata)
            if t.ndim >= 2 and t.shape[-1] == t.shape[-2] == self.seq_len:
                self.attention_matrix += s.nbytes()
            else:
                self.activations += s.nbytes()
        return t


def dev_memory(args) -> None:
    c, M, dtype = FLUX_DEV, args.maps_count, torch.bfloat16
    img_tokens = (args.size // (VAE_FACTOR * PATCH)) ** 2
    L = img_tokens + args.text_tokens
    D, H = c.hidden_size, c.num_heads
    spec = default_spec(MapSet(RELEASE.names[:M]) if M <= RELEASE.size else RELEASE, rank=args.rank)
    with torch.device("meta"):
        model = Flux(c)
        double = DoubleStreamBlock(D, H, c.mlp_ratio, c.qkv_bias).to(dtype).requires_grad_(False)
        single = SingleStreamBlock(D, H, c.mlp_ratio).to(dtype).requires_grad_(False)
        lora_d, lora_s = BlockLoRA(spec), BlockLoRA(spec)
        img = torch.empty(M, img_tokens, D, dtype=dtype, requires_grad=True)
        txt = torch.empty(M, args.text_tokens, D, dtype=dtype, requires_grad=True)
        vec = torch.empty(M, D, dtype=dtype)
        pe = torch.empty(M, 1, L, D // H // 2, 2, 2)
    weights = (list(double.parameters()) + list(single.parameters())
               + list(lora_d.parameters()) + list(lora_s.parameters()))
    counters = {}
    for name, run in (("double", lambda: double_block_forward(double, img, txt, vec, pe, group=M,
                                                               query_index=spec.maps.query_index, adapter=lora_d)),
                      ("single", lambda: single_block_forward(single, torch.cat((txt, img), 1), vec, pe, group=M,
                                                               query_index=spec.maps.query_index, adapter=lora_s))):
        counter = SavedBytes(weights, L)
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            run()
        counters[name] = counter
    n_weights = sum(p.numel() for p in model.parameters())
    weight_bytes = n_weights * 2
    adapter_bytes = spec.num_params() * 4 * 4  # fp32 factors + gradients + AdamW exp_avg + exp_avg_sq
    block_state = M * L * D * 2  # one block's input (img + txt, or x) in bf16
    no_ckpt = c.depth * counters["double"].activations + c.depth_single_blocks * counters["single"].activations
    recompute = max(counters["double"].activations, counters["single"].activations)
    ckpt = (c.depth + c.depth_single_blocks) * block_state + recompute + 2 * block_state  # + activation grads
    print(f"FLUX.1-dev ({n_weights / 1e9:.2f} B params, bf16), {M} maps of {args.size}x{args.size} "
          f"({img_tokens} image + {args.text_tokens} text tokens per map), 1 scene per micro-batch, "
          f"adapter rank {args.rank} ({spec.num_params() / 1e6:.1f} M params)")
    for name, cnt in counters.items():
        print(f"  measured: one {name} block keeps {cnt.activations / GiB:.2f} GiB for backward "
              f"(+ {cnt.attention_matrix / GiB:.2f} GiB attention weights with math attention only)")
    print(f"  weights {weight_bytes / GiB:.1f} GiB, adapter + grads + AdamW {adapter_bytes / GiB:.1f} GiB")
    for label, act in (("gradient checkpointing on ", ckpt), ("gradient checkpointing off", no_ckpt)):
        print(f"  {label}: activations {act / GiB:5.1f} GiB -> estimated peak "
              f"{(weight_bytes + adapter_bytes + act) / GiB:5.1f} GiB (+ CUDA context / allocator slack)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dev-memory", action="store_true", help="memory model of FLUX.1-dev instead of the speed run")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--maps", default=RELEASE.to_string())
    p.add_argument("--batch", type=int, default=1, help="scenes per step")
    p.add_argument("--latent", type=int, default=16, help="latent side (pixels / 8)")
    p.add_argument("--text-tokens", type=int, default=None)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--single", type=int, default=2)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--size", type=int, default=512, help="--dev-memory: image side in pixels")
    p.add_argument("--maps-count", type=int, default=5, help="--dev-memory: maps per scene")
    args = p.parse_args()
    if args.dev_memory:
        args.text_tokens = args.text_tokens or 256
        dev_memory(args)
    else:
        args.text_tokens = args.text_tokens or 8
        bench_steps(args)


if __name__ == "__main__":
    main()

"""bench/bench_memory.py: the fake-tensor count of GPU memory is exact and is not fooled.

The benchmark counts FLUX.1-dev's training and inference memory with fake tensors (no memory, no
arithmetic). Here, at toy size, the same simulation runs once on fake tensors and once on real ones
and must give the same bytes; its pieces (the storage ledger, CUDA's autocast policy, the
flash-attention stand-in, the GGUF layers) are checked on their own; and the count must move the
right way when the model or the settings change.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import _fake_gpu  # noqa: E402
import _gguf  # noqa: E402
import bench_memory  # noqa: E402
from _fake_gpu import StorageLedger, cuda_autocast, fake_mode, flash_sdpa  # noqa: E402
from bench_memory import TINY, Case  # noqa: E402

from lumix_core.model.adapter import default_spec  # noqa: E402
from lumix_core.model.flux import tiny_config  # noqa: E402

TOY = Case(size=64, text_tokens=8, rank=4, config=TINY)
simulate = functools.lru_cache(maxsize=None)(bench_memory.simulate)  # a case is simulated once per session
VARIANTS = {"checkpointing": {}, "no checkpointing": {"gradient_checkpointing": False},
            "block swap": {"blocks_to_swap": 3}, "fp8": {"weights": "fp8"}}
VARIANTS["inference"] = {"mode": "inference"}
VARIANTS["inference, photo, 2 scenes, 96x64"] = {"mode": "inference", "inference": "photo", "scenes": 2, "size": 96,
                                                 "height": 64}
VARIANTS["inference, gguf q8_0"] = {"mode": "inference", "weights": "q8_0"}
VARIANTS["inference, gguf q4_0, 2 scenes"] = {"mode": "inference", "weights": "q4_0", "scenes": 2}


# ---------------------------------------------------------------------- fake == real
@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_fake_tensor_count_equals_the_real_tensor_count_to_the_byte(variant):
    case = replace(TOY, **VARIANTS[variant])
    fake, real = simulate(case, fake=True), simulate(case, fake=False)
    assert fake.fake and not real.fake
    assert fake.peak_bytes == real.peak_bytes > 0
    assert fake.peak_tensor_bytes == real.peak_tensor_bytes
    assert fake.parts_bytes == real.parts_bytes
    assert fake.peak_phase == real.peak_phase
    assert fake.swap_bytes_per_step == real.swap_bytes_per_step


def test_the_frozen_weights_at_the_peak_are_every_weight_of_the_model():
    row = simulate(TOY)
    with fake_mode():
        model = bench_memory.build_flux(TINY, "bf16")
        blocks = sum(_fake_gpu.cuda_block_bytes(t.numel() * t.element_size())
                     for t in list(model.parameters()) + list(model.buffers()))
    assert row.parts_bytes["frozen_weights"] == blocks
    spec = default_spec(TOY.map_set, TOY.rank, TINY.hidden_size, TINY.depth, TINY.depth_single_blocks)
    adapter = sum(_fake_gpu.cuda_block_bytes(4 * n) for n in (
        torch.Size(s).numel() for s in spec.expected_shapes().values()))
    assert row.parts_bytes["adapter"] == adapter
    assert row.parts_bytes["adamw_state"] == 2 * adapter  # exp_avg + exp_avg_sq


def test_gguf_weights_are_their_quantized_bytes_and_the_rest_is_bf16():
    for qtype in _gguf.QTYPES:
        row = simulate(replace(TOY, mode="inference", weights=qtype))
        with fake_mode():
            model = bench_memory.build_flux(TINY, qtype)
        block = _fake_gpu.cuda_block_bytes
        quantized = [m for m in model.modules() if isinstance(m, _gguf.GgufLinear)]
        assert len(quantized) == 10 * TINY.depth + 3 * TINY.depth_single_blocks  # every linear of every block
        expected = sum(block(_gguf.quantized_bytes(m.out_features, m.in_features, qtype)) + block(4 * m.out_features)
                       for m in quantized)  # GGUF bytes + float32 bias
        inside = {id(t) for m in quantized for t in m.parameters()}
        expected += sum(block(2 * t.numel()) for t in model.parameters() if id(t) not in inside)  # bf16
        assert row.parts_bytes["frozen_weights"] == expected


def _gguf_block(qtype: str, scale: float, quants: list[int]) -> torch.Tensor:
    """One GGUF block written by hand from the format's definition (``quants`` as stored: int8 or nibbles 0..15)."""
    head = list(torch.tensor([scale], dtype=torch.float16).view(torch.uint8).tolist())
    if qtype == "q8_0":
        body = torch.tensor(quants, dtype=torch.int8).view(torch.uint8).tolist()
    else:  # byte j holds weight j in its low nibble and weight j + 16 in its high nibble
        body = [quants[j] | (quants[j + 16] << 4) for j in range(16)]
    return torch.tensor(head + body, dtype=torch.uint8)


def test_gguf_blocks_decode_as_the_format_defines():
    q8 = list(range(-16, 16))
    data = torch.stack([_gguf_block("q8_0", 0.5, q8), _gguf_block("q8_0", -2.0, q8[::-1])]).reshape(1, 68)
    expected = torch.tensor([0.5 * q for q in q8] + [-2.0 * q for q in q8[::-1]]).reshape(1, 64)
    assert torch.equal(_gguf.dequantize(data, "q8_0", (1, 64), torch.float32), expected)
    q4 = [(3 * j) % 16 for j in range(32)]
    data = _gguf_block("q4_0", 0.25, q4).reshape(1, 18)
    expected = torch.tensor([0.25 * (q - 8) for q in q4]).reshape(1, 32)
    assert torch.equal(_gguf.dequantize(data, "q4_0", (1, 32), torch.bfloat16), expected.bfloat16())
    gguf = pytest.importorskip("gguf")  # where the gguf package is installed: its own decoder agrees
    for qtype, data in (("q8_0", torch.stack([_gguf_block("q8_0", 0.5, q8)] * 3)),
                        ("q4_0", torch.stack([_gguf_block("q4_0", 0.25, q4)] * 3))):
        ref = gguf.quants.dequantize(data.numpy(), getattr(gguf.GGMLQuantizationType, qtype.upper()))
        got = _gguf.dequantize(data.reshape(1, -1), qtype, (1, 96), torch.float32)
        assert torch.equal(got, torch.from_numpy(ref).reshape(1, 96).float())


@pytest.mark.parametrize("qtype", list(_gguf.QTYPES))
def test_a_gguf_layer_holds_its_bf16_weight_only_while_it_runs(qtype):
    """ComfyUI-GGUF's order: bias cast, fp16 weight, cast to bf16 (both alive), matmul; nothing stays."""
    layer = _gguf.GgufLinear(64, 48, True, qtype)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    n = 64 * 48
    ledger = StorageLedger("cpu")
    with ledger, torch.no_grad():
        y = layer(x)
        after = ledger.current
    assert ledger.peak.bytes == 2 * 48 + (2 + 2) * n  # bf16 bias + the fp16 and the bf16 weight during the cast
    assert after == y.numel() * 2  # only the output is left


# ------------------------------------------------------------------------ not fooled
def test_the_count_follows_the_model_and_the_settings():
    base = simulate(TOY)
    wider = simulate(replace(TOY, config=tiny_config(hidden_size=128, num_heads=2, depth=2, depth_single_blocks=2,
                                                     context_in_dim=32, vec_in_dim=16)))
    larger = simulate(replace(TOY, size=128))
    no_ckpt = simulate(replace(TOY, gradient_checkpointing=False))
    frozen = base.parts_bytes["frozen_weights"]
    assert wider.peak_bytes > base.peak_bytes and wider.parts_bytes["frozen_weights"] > frozen
    assert larger.peak_bytes > base.peak_bytes and larger.parts_bytes["frozen_weights"] == frozen
    assert no_ckpt.peak_bytes > base.peak_bytes
    assert no_ckpt.parts_bytes["frozen_weights"] == base.parts_bytes["frozen_weights"]
    fp8 = simulate(replace(TOY, weights="fp8"))
    assert fp8.parts_bytes["frozen_weights"] < base.parts_bytes["frozen_weights"]


def test_swapping_blocks_takes_their_weights_off_the_device_and_counts_the_copies():
    deeper = replace(TOY, config=tiny_config(hidden_size=64, num_heads=2, depth=2, depth_single_blocks=6,
                                             context_in_dim=32, vec_in_dim=16))
    base, swapped = simulate(deeper), simulate(replace(deeper, blocks_to_swap=5))  # 5 single blocks, 2 slots
    assert swapped.parts_bytes["frozen_weights"] < base.parts_bytes["frozen_weights"]
    saved = base.parts_bytes["frozen_weights"] - swapped.parts_bytes["frozen_weights"]
    assert base.peak_bytes - swapped.peak_bytes == saved - 512  # all else the same but the swapper's 0-d anchor
    assert swapped.swap_bytes_per_step > 0 and swapped.swap_seconds_pcie4 >= 0
    # the helper's traffic formula leaves the 256-byte alignment of each tensor aside
    assert 0.95 < swapped.swap_traffic_formula_bytes / swapped.swap_bytes_per_step <= 1


# ----------------------------------------------------------------------------- ledger
def _ledger_run(fake: bool) -> StorageLedger:
    ledger = StorageLedger("cpu")
    with (fake_mode() if fake else contextlib.nullcontext()), ledger:
        a = torch.ones(1000)  # 4000 bytes
        v = a[10:].view(-1, 10)  # a view: nothing new
        a.mul_(2)  # in place: nothing new
        b = a * 2  # 4000 more
        c = torch.tensor([1.0, 2.0])  # torch.tensor: counted (lift_fresh)
        del a  # the view keeps the storage alive
        peak_before = ledger.current
        del v  # now it goes
        after = ledger.current
        del b, c
    return ledger, peak_before, after


@pytest.mark.parametrize("fake", [False, True], ids=["real", "fake"])
def test_the_ledger_counts_each_storage_once_from_birth_to_death(fake):
    ledger, before, after = _ledger_run(fake)
    assert before == 4000 + 4000 + 8
    assert after == 4000 + 8
    assert ledger.current == 0
    assert ledger.peak.bytes == 8008
    assert ledger.peak_blocks.bytes == 2 * 4096 + 512  # 512-byte blocks, as the CUDA allocator counts


# --------------------------------------------------------------------- CUDA autocast
def _autocast_ops(device: str) -> list:
    """Output dtypes of ops FLUX + the adapter send through autocast (and a few policies more)."""
    x = torch.ones(4, 8, dtype=torch.bfloat16, device=device)
    xf, w = torch.ones(4, 8, device=device), torch.ones(3, 8, device=device)
    b3 = torch.ones(2, 4, 8, device=device)
    bias = torch.ones(3, device=device)
    return [torch.nn.functional.linear(xf, w).dtype, torch.nn.functional.linear(x, w, bias).dtype,
            torch.nn.functional.layer_norm(x, (8,)).dtype, torch.addcmul(x, xf, x).dtype,
            (x ** 2).dtype, torch.mean(x ** 2, dim=-1, keepdim=True).dtype, torch.rsqrt(x).dtype,
            x.sum().dtype, x.sum(1).dtype, torch.sum(x, dtype=torch.bfloat16).dtype, torch.softmax(x, -1).dtype,
            torch.einsum("ij,kj->ik", xf, w).dtype, torch.bmm(b3, b3.transpose(1, 2)).dtype,
            torch.matmul(xf, w.t()).dtype, torch.nn.functional.gelu(x, approximate="tanh").dtype,
            torch.nn.functional.silu(xf).dtype, torch.cat([x, xf]).dtype, torch.exp(x).dtype,
            torch.nn.functional.mse_loss(x, x).dtype, torch.linalg.vector_norm(x).dtype, torch.norm(x).dtype,
            x.sum(0).shape, x.sum(1).shape]  # one plan per argument list: sum(x, dim) -> sum(x, dim, dtype)


def test_the_emulated_autocast_casts_as_cuda_autocast_does():
    with cuda_autocast("cpu"), torch.autocast("cpu", dtype=torch.bfloat16):
        emulated = _autocast_ops("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cpu = _autocast_ops("cpu")
    # CUDA's own autocast kernels on fake CUDA tensors (torch.autocast refuses to start without a GPU)
    previous = torch.get_autocast_dtype("cuda")
    with fake_mode():
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", torch.bfloat16)
        torch.autocast_increment_nesting()
        try:
            cuda = _autocast_ops("cuda")
        finally:
            torch.autocast_decrement_nesting()
            torch.set_autocast_enabled("cuda", False)
            torch.set_autocast_dtype("cuda", previous)
            torch.clear_autocast_cache()
    assert emulated == cuda
    assert emulated != cpu  # e.g. layer_norm, rsqrt and sum run in fp32 on CUDA, in bf16 on the CPU


def test_the_emulated_autocast_is_cudas_not_the_cpus_and_caches_weight_casts():
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    w = torch.nn.Parameter(torch.randn(16, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.functional.layer_norm(x, (8,)).dtype == torch.bfloat16  # CPU autocast leaves it
    ledger = StorageLedger("cpu")
    with cuda_autocast("cpu") as policy, ledger, torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.functional.layer_norm(x, (8,)).dtype == torch.float32  # CUDA autocast: fp32
        assert (x.float().sum()).dtype == torch.float32
        y1 = torch.nn.functional.linear(x, w)
        n = ledger.current
        y2 = torch.nn.functional.linear(x, w)  # the bf16 copy of w comes from the cache
        assert y1.dtype == y2.dtype == torch.bfloat16
        assert ledger.current - n == y2.numel() * 2
        assert len(policy.cache) == 1
    assert not policy.cache  # emptied when the autocast region closed
    with torch.autocast("cpu", dtype=torch.bfloat16):  # and the built-in CPU kernels are back
        assert torch.nn.functional.layer_norm(x, (8,)).dtype == torch.bfloat16


# ------------------------------------------------------------------- flash attention
def test_the_flash_stand_in_computes_attention_and_allocates_what_flash_does():
    B, H, L, D = 2, 3, 40, 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g, requires_grad=True) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    ledger = StorageLedger("cpu")
    with ledger:
        out = flash_sdpa(q, k, v)
        forward = ledger.current
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    assert forward == B * H * L * D * 4 + B * H * L * 4  # out + fp32 logsumexp: no L x L matrix
    # backward adds dq, dk, dv, the contiguous copies and the fp32 work buffers (L and D rounded up)
    L128, D32 = 128, 32
    work = B * H * L128 * 4 + B * L128 * H * D32 * 4
    assert ledger.peak.bytes >= forward + 3 * B * H * L * D * 4 + work
    assert ledger.peak.bytes < forward + B * H * L * L * 4 + 6 * B * H * L * D * 4 + work


# ----------------------------------------------------------------------------- CLI
def test_the_cli_prints_json_rows_and_a_markdown_table(capsys):
    bench_memory.main(["--json", "--model", "tiny", "--sizes", "64", "--weights", "bf16,q8_0", "--swap", "3",
                       "--text-tokens", "8", "--rank", "4", "--targets", "", "--rows", "all", "--photo-sizes", "96x64",
                       "--scenes", "2"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["mode"] for r in rows} == {"train", "inference", "summary"}
    train = [r for r in rows if r["mode"] == "train"]
    assert [(r["gradient_checkpointing"], r["blocks_to_swap"]) for r in train] == (
        [(True, 0), (False, 0), (True, 3)])
    assert all(r["peak_gib"] > 0 and r["weights"] == "bf16" and r["size"] == 64 for r in train)  # GGUF: no training
    inference = [(r["inference"], r["weights"], r["scenes"], r["size"], r["height"], r["sequences"])
                 for r in rows if r["mode"] == "inference"]
    assert inference == [(kind, w, n, width, height, n * (10 if kind == "text" else 5))
                         for kind, width, height in (("text", 64, 64), ("photo", 64, 64), ("photo", 96, 64))
                         for w in ("bf16", "q8_0") for n in (2,)]
    assert all(r["peak_gib"] > 0 and r["blocks_to_swap"] is None for r in rows if r["mode"] == "inference")
    assert rows[-1]["mode"] == "summary" and rows[-1]["assumptions"]
    bench_memory.main(["--model", "tiny", "--sizes", "64", "--weights", "bf16", "--swap", "0", "--no-off",
                       "--text-tokens", "8", "--rank", "4", "--targets", ""])
    out = capsys.readouterr().out
    assert "| train | bf16 | 64² | on | 0 |" in out and "NOT included" in out


def test_the_readme_vram_table_is_made_from_the_json_rows(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tools"))
    from make_vram_table import read_rows, table

    def row(kind, weights, scenes, width, height, gib):
        return json.dumps({"mode": "inference", "inference": kind, "weights": weights, "scenes": scenes,
                           "size": width, "width": width, "height": height, "peak_gib": gib})

    lines = [row("photo", "bf16", 1, 1536, 1152, 30.04), row("text", "q4_0", 1, 512, 512, 9.96),
             row("text", "bf16", 1, 512, 512, 25.01), row("text", "bf16", 2, 512, 512, 27.2),
             json.dumps({"mode": "train", "weights": "bf16", "size": 512, "peak_gib": 27.6}),
             json.dumps({"mode": "summary", "wall_s": 1.0})]
    assert table(read_rows(io.StringIO("\n".join(lines)))).splitlines() == [
        "| one model call | size | bf16 | GGUF Q4_0 |", "| --- | --- | ---: | ---: |",
        "| text + CFG, 1 scene (10 seq) | 512² | 25.0 | 10.0 |", "| text + CFG, 2 scenes (20 seq) | 512² | 27.2 | - |",
        "| photo, 1 scene (5 seq) | 1536×1152 | 30.0 | - |"]

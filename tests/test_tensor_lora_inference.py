"""The inference path of Tensor LoRA: cached prepared factors, layouts, constant operation count."""
import copy
import sys
from pathlib import Path

import pytest
import torch

from lumix_core.model.tensor_lora import TensorLoRA

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_dispatch  # noqa: E402


def trained_lora(seed=0, M=3, d=16, d_out=24, R=2):
    g = torch.Generator().manual_seed(seed)
    lora = TensorLoRA(M, d, d_out, R)
    with torch.no_grad():
        for p in (lora.G1, lora.G2, lora.G3):
            p.copy_(torch.randn(p.shape, generator=g))
    return lora


def fresh_output(lora, x):
    """The adapter's output from a brand-new module holding the same factor values (no cache)."""
    twin = TensorLoRA(lora.num_maps, lora.in_features, lora.out_features, lora.rank, lora.alpha)
    twin.load_state_dict({k: v.detach().clone() for k, v in lora.state_dict().items()})
    with torch.no_grad():
        return twin(x)


def test_prepared_factors_are_cached_only_for_frozen_factors_without_grad():
    lora = trained_lora()
    cpu, f32 = torch.device("cpu"), torch.float32
    with torch.no_grad():  # trainable factors: never cached (a fused optimizer would not bump versions)
        assert lora.mixing_matrix(cpu, f32) is not lora.mixing_matrix(cpu, f32)
    lora.requires_grad_(False)
    assert lora.mixing_matrix(cpu, f32) is not lora.mixing_matrix(cpu, f32)  # grad mode on: fresh
    with torch.no_grad():
        assert lora.mixing_matrix(cpu, f32) is lora.mixing_matrix(cpu, f32)
        assert lora.expansion(cpu, f32, slice(0, 8), heads=2) is lora.expansion(cpu, f32, slice(0, 8), heads=2)
        assert lora.expansion(cpu, f32) is not lora.expansion(cpu, torch.float64)
    with torch.inference_mode():
        assert lora.mixing_matrix(cpu, f32) is lora.mixing_matrix(cpu, f32)


def test_cached_factors_follow_in_place_edits_loads_and_moves():
    lora = trained_lora().requires_grad_(False)
    x = torch.randn(6, 5, 16)
    with torch.no_grad():
        lora(x)  # fills the cache
        lora.G3.mul_(-2.0)
        torch.testing.assert_close(lora(x), fresh_output(lora, x))
        lora.G1.copy_(torch.randn_like(lora.G1))
        torch.testing.assert_close(lora(x), fresh_output(lora, x))
    lora.load_state_dict(trained_lora(seed=1).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(lora(x), fresh_output(lora, x))
        lora.double()
        assert not lora._cache  # a move or cast drops the entries of the old device/dtype
        out = lora(x.double())
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, fresh_output(lora, x.double()))


@pytest.mark.parametrize("fused", [False, True])
def test_training_sees_fresh_factors_every_step(fused):
    """Forward passes with grad, no-grad evaluations between steps, and freezing/unfreezing
    around optimizer steps (fused AdamW does not bump version counters) all see the factors
    as they are now."""
    lora = trained_lora(seed=2)
    x, target = torch.randn(6, 5, 16), torch.randn(6, 5, 24)
    opt = torch.optim.AdamW(lora.parameters(), lr=0.05, fused=fused)
    for step in range(3):
        out = lora(x)
        torch.testing.assert_close(out.detach(), fresh_output(lora, x))
        (out - target).square().mean().backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            torch.testing.assert_close(lora(x), fresh_output(lora, x))
        lora.requires_grad_(False)  # e.g. a validation pass with a frozen copy
        with torch.no_grad():
            torch.testing.assert_close(lora(x), fresh_output(lora, x))
            torch.testing.assert_close(lora(x), fresh_output(lora, x))  # served from the cache
        lora.requires_grad_(True)


def test_heads_update_on_any_layout_equals_the_delta():
    """Token-major (V), head-major (K) and any other layout of a head-split output."""
    M, d, H, R, L, G = 5, 32, 4, 3, 6, 2
    lora = trained_lora(seed=3, M=M, d=d, d_out=d, R=R).requires_grad_(False)
    x = torch.randn(G * M, L, d)
    with torch.no_grad():
        z = lora.codes(x)
        expected_delta = lora.delta(z, x.dtype).unflatten(2, (H, d // H)).transpose(1, 2)
        layouts = {
            "token-major": torch.randn(G * M, L, H, d // H).transpose(1, 2),
            "head-major": torch.randn(G * M, H, L, d // H),
            "other": torch.randn(G * M, L, d // H, H).permute(0, 3, 1, 2),
        }
        for name, out in layouts.items():
            expected = out + expected_delta
            lora.add_heads_delta_(out, z)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5, msg=name)


def test_model_call_adds_the_same_operations_whatever_heads_and_groups():
    """Counted, not timed: the operations LumiX adds to a FLUX call do not grow with the head
    count or the number of scene groups (bench/bench_dispatch.py prints the ratios)."""
    adapter = bench_dispatch.random_adapter()
    added = {}
    for heads, groups in [(2, 1), (2, 4), (24, 1), (24, 2)]:
        plain, lumix = bench_dispatch.core_counts(heads, groups, adapter)
        p, q = sum(plain.values()), sum(lumix.values())
        added[heads, groups] = q - p
        assert q <= bench_dispatch.TARGET * p, (heads, groups, p, q)
    assert len(set(added.values())) == 1, added


def test_deep_copies_do_not_share_the_cache():
    lora = trained_lora().requires_grad_(False)
    with torch.no_grad():
        lora(torch.randn(3, 2, 16))
        twin = copy.deepcopy(lora)
        twin.G3.zero_()
        assert torch.count_nonzero(twin(torch.randn(3, 2, 16))) == 0


def test_factors_made_in_inference_mode_are_cached_by_storage():
    """ComfyUI loads adapters inside torch.inference_mode(): no version counters there."""
    with torch.inference_mode():
        lora = trained_lora().requires_grad_(False)
        x = torch.randn(6, 5, 16)
        assert lora.G3.is_inference()
        first = lora(x)
        assert lora.mixing_matrix(x.device, x.dtype) is lora.mixing_matrix(x.device, x.dtype)
        lora.G3.mul_(-1.0)  # invisible to the cache without a version counter ...
        lora.clear_cache()  # ... hence clear_cache
        torch.testing.assert_close(lora(x), -first)
        lora.to(torch.float64)  # a move or cast builds new storage: rebuilt
        torch.testing.assert_close(lora(x.double()).float(), -first, rtol=1e-4, atol=1e-4)

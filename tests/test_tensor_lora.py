"""The fast Tensor LoRA contraction equals the literal published formula."""
import math

import pytest
import torch

from lumix_core.model.tensor_lora import TensorLoRA


def literal(lora: TensorLoRA, x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Oracle: the release's left-to-right order for one group, X·G2 first ([M,M,L,R,R])."""
    B = torch.einsum("jlu,iurq->ijlrq", x, lora.G2)
    H = torch.einsum("ijlrq,ijq->ijlr", B, lora.G1)
    Y = torch.einsum("ijlr,ior->ijlo", H, lora.G3).sum(dim=1)
    return Y * ((lora.alpha if lora.alpha is not None else 1.0) / math.sqrt(lora.rank)) * strength


def random_lora(M, d_in, d_out, R, alpha=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lora = TensorLoRA(M, d_in, d_out, R, alpha)
    with torch.no_grad():
        for p in (lora.G1, lora.G2, lora.G3):
            p.copy_(torch.randn(p.shape, generator=g))
    return lora.to(dtype)


@pytest.mark.parametrize("kind", ["kv", "proj"])
@pytest.mark.parametrize("groups", [1, 3])
def test_fast_equals_literal(kind, groups):
    d = 48
    M, R, L = 5, 4, 7
    d_out = 2 * d if kind == "kv" else d
    lora = random_lora(M, d, d_out, R, alpha=2.0, seed=groups)
    x = torch.randn(groups * M, L, d)
    fast = lora(x, strength=0.7)
    oracle = torch.cat([literal(lora, x[g * M:(g + 1) * M], 0.7) for g in range(groups)])
    assert fast.shape == (groups * M, L, d_out)
    torch.testing.assert_close(fast, oracle, rtol=0, atol=1e-5 * oracle.abs().max().item())


def test_in_place_heads_update_matches_delta_on_strided_views():
    """K/V deltas land per head exactly where FLUX's "(H D)" split puts them, also into a
    strided view of a fused QKV buffer (as V is)."""
    M, d, H, R, L = 5, 32, 4, 3, 6
    lora = random_lora(M, d, 2 * d, R, seed=3)
    x = torch.randn(2 * M, L, d)
    z = lora.codes(x)
    full = lora.delta(z, x.dtype)  # [2M, L, 2d]
    qkv = torch.randn(2 * M, L, 3 * d)
    v = qkv.view(2 * M, L, 3, H, d // H).permute(2, 0, 3, 1, 4)[2]  # strided view
    expected = v + full[..., d:].unflatten(2, (H, d // H)).transpose(1, 2)
    lora.add_heads_delta_(v, z, rows=slice(d, 2 * d))
    torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-5)
    k = torch.randn(2 * M, H, L, d // H)
    expected_k = k + full[..., :d].unflatten(2, (H, d // H)).transpose(1, 2)
    lora.add_heads_delta_(k, z, rows=slice(0, d))
    torch.testing.assert_close(k, expected_k, rtol=1e-5, atol=1e-5)


def test_in_place_token_update_matches_delta():
    lora = random_lora(3, 16, 16, 2, seed=4)
    x = torch.randn(6, 5, 16)
    out = torch.randn(6, 5, 16)
    expected = out + lora(x)
    lora.add_delta_(out, lora.codes(x))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_published_init_and_scale():
    lora = TensorLoRA(5, 256, 512, rank=8, alpha=None)
    assert torch.count_nonzero(lora.G3) == 0
    assert abs(lora.G1.std().item() - 0.02) < 0.004
    assert abs(lora.G2.std().item() - 1 / math.sqrt(256 * 8)) < 0.1 / math.sqrt(256 * 8)
    assert lora.scale() == pytest.approx(1 / math.sqrt(8))
    assert TensorLoRA(5, 8, 8, rank=4, alpha=16.0).scale(0.5) == pytest.approx(16 / 2 * 0.5)
    x = torch.randn(5, 3, 256)
    assert torch.count_nonzero(lora(x)) == 0  # a fresh adapter changes nothing


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_keeps_activation_dtype(dtype):
    lora = random_lora(5, 64, 128, 4, seed=5)
    with torch.no_grad():
        lora.G3.mul_(0.05)
    x = torch.randn(10, 8, 64)
    ref = lora(x)
    out = lora(x.to(dtype))
    assert out.dtype == dtype
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 2e-2, rel
    # adapter weights stay in their own dtype while activations run in low precision
    assert lora.G2.dtype == torch.float32


def test_batch_must_hold_whole_groups():
    lora = random_lora(5, 8, 8, 2)
    with pytest.raises(ValueError, match="not a multiple of the map count 5"):
        lora(torch.randn(7, 3, 8))

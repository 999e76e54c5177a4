"""Invariants of Query-Broadcast Attention + Tensor LoRA on FLUX blocks."""
import pytest
import torch
from helpers import block_inputs, blocks

from lumix_core.maps import RELEASE, MapSet
from lumix_core.model.adapter import BlockLoRA, default_spec
from lumix_core.model.qba import double_block_forward, single_block_forward, takes_transformer_options

M, QI = RELEASE.size, RELEASE.query_index
D = 64


def block_lora(rank=4, seed=0, zero_g3=False, maps=RELEASE):
    spec = default_spec(maps=maps, rank=rank, hidden=D, double_blocks=1, single_blocks=1)
    lora = BlockLoRA(spec)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in (lora.kv_tt_lora, lora.proj_tt_lora):
            t.reset_parameters(g)
            t.G1.copy_(torch.randn(t.G1.shape, generator=g) * 0.5)
            t.G3.copy_(torch.zeros_like(t.G3) if zero_g3 else torch.randn(t.G3.shape, generator=g) * 0.5)
    return lora


def run_double(block, img, txt, vec, pe, group=M, qi=QI, **kw):
    with torch.no_grad():
        return double_block_forward(block, img.clone(), txt.clone(), vec, pe, group=group, query_index=qi, **kw)


def run_single(block, x, vec, pe, group=M, qi=QI, **kw):
    with torch.no_grad():
        return single_block_forward(block, x.clone(), vec, pe, group=group, query_index=qi, **kw)


def plain_double(block, img, txt, vec, pe):
    with torch.no_grad():
        return block(img.clone(), txt.clone(), vec, pe)


def plain_single(block, x, vec, pe):
    with torch.no_grad():
        return block(x.clone(), vec, pe)


@pytest.fixture(scope="module")
def setup():
    double, single = blocks(1)
    img, txt, vec, pe = block_inputs(2 * M, seed=2)
    return double, single, img, txt, vec, pe


def test_zero_g3_color_map_equals_plain_block(setup):
    double, single, img, txt, vec, pe = setup
    lora = block_lora(zero_g3=True)
    qimg, qtxt = run_double(double, img, txt, vec, pe, adapter=lora)
    pimg, ptxt = plain_double(double, img, txt, vec, pe)
    color = torch.arange(2 * M) % M == QI
    torch.testing.assert_close(qimg[color], pimg[color], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(qtxt[color], ptxt[color], rtol=1e-5, atol=1e-5)
    # QBA is not a no-op: the other maps attend with the color map's queries
    assert (qimg[~color] - pimg[~color]).abs().max() > 1e-3

    x = torch.cat((txt, img), dim=1)
    qx = run_single(single, x, vec, pe, adapter=lora)
    px = plain_single(single, x, vec, pe)
    torch.testing.assert_close(qx[color], px[color], rtol=1e-5, atol=1e-5)
    assert (qx[~color] - px[~color]).abs().max() > 1e-3


def test_group_of_one_or_identical_maps_is_plain_flux(setup):
    double, single, img, txt, vec, pe = setup
    lora1 = block_lora(zero_g3=True, maps=MapSet(("color",)))
    qimg, qtxt = run_double(double, img, txt, vec, pe, group=1, qi=0, adapter=lora1)
    pimg, ptxt = plain_double(double, img, txt, vec, pe)
    torch.testing.assert_close(qimg, pimg, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(qtxt, ptxt, rtol=1e-5, atol=1e-5)

    # five identical maps: every map behaves like the single plain block
    same = lambda t: t[:1].expand(M, *t.shape[1:]).clone()  # noqa: E731
    i5, t5, v5, p5 = same(img), same(txt), same(vec), pe[:1].expand(M, *pe.shape[1:])
    lora = block_lora(zero_g3=True)
    qimg, qtxt = run_double(double, i5, t5, v5, p5, adapter=lora)
    pimg, ptxt = plain_double(double, i5, t5, v5, p5)
    torch.testing.assert_close(qimg, pimg, rtol=1e-5, atol=1e-5)
    x5 = torch.cat((t5, i5), 1)
    torch.testing.assert_close(run_single(single, x5, v5, p5, adapter=lora), plain_single(single, x5, v5, p5),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["double", "single"])
def test_block_diagonal_g1_isolates_maps(setup, kind):
    """With G1[i,j]=0 for j≠i, map i sees only its own input and the color query."""
    double, single, img, txt, vec, pe = setup
    img, txt, vec, pe = img[:M], txt[:M], vec[:M], pe[:M]
    diag = block_lora(seed=3)
    full = block_lora(seed=3)
    with torch.no_grad():
        for t in (diag.kv_tt_lora, diag.proj_tt_lora):
            t.G1.mul_(torch.eye(M)[:, :, None])
    victim, target = 4, 0  # perturb the normal map, watch the albedo map
    img2 = img.clone()
    img2[victim] += torch.randn_like(img2[victim])

    def out(lora, image):
        if kind == "double":
            return run_double(double, image, txt, vec, pe, adapter=lora)[0]
        return run_single(single, torch.cat((txt, image), 1), vec, pe, adapter=lora)

    torch.testing.assert_close(out(diag, img)[target], out(diag, img2)[target], rtol=0, atol=1e-6)
    assert (out(full, img)[target] - out(full, img2)[target]).abs().max() > 1e-4
    # the color input still reaches every map through the broadcast query
    img3 = img.clone()
    img3[QI] += torch.randn_like(img3[QI])
    assert (out(diag, img)[target] - out(diag, img3)[target]).abs().max() > 1e-4


def test_two_scenes_and_cfg_chunks_equal_separate_calls(setup):
    double, single, img, txt, vec, pe = setup
    lora = block_lora(seed=5)
    # uncond chunk then cond chunk, each two scenes of five maps
    u_img, u_txt, u_vec, _ = block_inputs(2 * M, seed=7)
    all_img, all_txt = torch.cat((u_img, img)), torch.cat((u_txt, txt))
    all_vec, all_pe = torch.cat((u_vec, vec)), torch.cat((pe, pe))
    joint_img, joint_txt = run_double(double, all_img, all_txt, all_vec, all_pe, adapter=lora)
    joint_x = run_single(single, torch.cat((all_txt, all_img), 1), all_vec, all_pe, adapter=lora)
    for g in range(4):
        s = slice(g * M, (g + 1) * M)
        sep_img, sep_txt = run_double(double, all_img[s], all_txt[s], all_vec[s], all_pe[s], adapter=lora)
        torch.testing.assert_close(joint_img[s], sep_img, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(joint_txt[s], sep_txt, rtol=1e-5, atol=1e-5)
        sep_x = run_single(single, torch.cat((all_txt[s], all_img[s]), 1), all_vec[s], all_pe[s], adapter=lora)
        torch.testing.assert_close(joint_x[s], sep_x, rtol=1e-5, atol=1e-5)


def test_in_place_inference_equals_autograd_path(setup):
    """Inference writes deltas into K/V/proj in place; training builds new tensors. Same numbers."""
    double, single, img, txt, vec, pe = setup
    lora = block_lora(seed=6)
    fast_img, fast_txt = run_double(double, img, txt, vec, pe, adapter=lora)
    grad_img, grad_txt = double_block_forward(double, img, txt, vec, pe, group=M, query_index=QI, adapter=lora)
    assert grad_img.requires_grad
    torch.testing.assert_close(fast_img, grad_img.detach(), rtol=1e-5, atol=1e-5)
    x = torch.cat((txt, img), 1)
    fast_x = run_single(single, x, vec, pe, adapter=lora)
    grad_x = single_block_forward(single, x, vec, pe, group=M, query_index=QI, adapter=lora)
    torch.testing.assert_close(fast_x, grad_x.detach(), rtol=1e-5, atol=1e-5)
    grad_x.square().mean().backward()
    assert lora.kv_tt_lora.G3.grad is not None and lora.kv_tt_lora.G3.grad.abs().sum() > 0
    assert lora.proj_tt_lora.G1.grad is not None


def test_share_query_off_and_qba_only(setup):
    double, single, img, txt, vec, pe = setup
    # QBA alone (no adapter) keeps the color map plain; without sharing and without adapter it is plain FLUX
    qimg, _ = run_double(double, img, txt, vec, pe)
    pimg, _ = plain_double(double, img, txt, vec, pe)
    color = torch.arange(2 * M) % M == QI
    torch.testing.assert_close(qimg[color], pimg[color], rtol=1e-5, atol=1e-5)
    nimg, _ = run_double(double, img, txt, vec, pe, share_query=False)
    torch.testing.assert_close(nimg, pimg, rtol=1e-5, atol=1e-5)


def test_mask_and_transformer_options_reach_attention(setup):
    double, single, img, txt, vec, pe = setup
    seen = []

    def attention(q, k, v, pe, mask=None, transformer_options=None):
        seen.append((mask, transformer_options))
        from lumix_core.model.flux_math import attention as ref
        return ref(q, k, v, pe, mask)

    L = txt.shape[1] + img.shape[1]
    mask = torch.zeros(L, L)
    mask[:, -1] = float("-inf")  # hide the last image token
    opts = {"cond_or_uncond": [1]}
    masked, _ = run_double(double, img, txt, vec, pe, attn_mask=mask, attention=attention, transformer_options=opts)
    run_single(single, torch.cat((txt, img), 1), vec, pe, attn_mask=mask, attention=attention,
               transformer_options=opts)
    assert all(m is mask and o is opts for m, o in seen) and len(seen) == 2
    unmasked, _ = run_double(double, img, txt, vec, pe)
    assert (masked - unmasked).abs().max() > 1e-4

    def old_attention(q, k, v, pe, mask=None):  # hosts before 0.3.60 take no transformer_options
        from lumix_core.model.flux_math import attention as ref
        return ref(q, k, v, pe, mask)

    assert takes_transformer_options(attention) and not takes_transformer_options(old_attention)
    again, _ = run_double(double, img, txt, vec, pe, attn_mask=mask, attention=old_attention)
    torch.testing.assert_close(again, masked)


def test_batch_not_multiple_of_group_is_refused(setup):
    double, single, img, txt, vec, pe = setup
    with pytest.raises(ValueError, match="batch of 7 is not a multiple of the map count 5"):
        run_double(double, img[:7], txt[:7], vec[:7], pe[:7])
    with pytest.raises(ValueError, match="not a multiple of the map count 5"):
        run_single(single, torch.cat((txt, img), 1)[:7], vec[:7], pe[:7])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_blocks(setup, dtype):
    double, single, img, txt, vec, pe = setup
    lora = block_lora(seed=8)
    ref_img, _ = run_double(double, img, txt, vec, pe, adapter=lora)
    d16 = [b.to(dtype) for b in blocks(1)]
    out, _ = run_double(d16[0], img.to(dtype), txt.to(dtype), vec.to(dtype), pe, adapter=lora)
    assert out.dtype == dtype and lora.kv_tt_lora.G2.dtype == torch.float32
    rel = ((out.float() - ref_img).norm() / ref_img.norm()).item()
    assert rel < 3e-2, rel

"""Query-Broadcast Attention + Tensor LoRA for FLUX double- and single-stream blocks.

The functions run a block *from its own submodules*, so they work on any object with FLUX's
attribute names: the BFL reference, ComfyUI's ``comfy.ldm.flux.layers`` blocks (keeping the
host's weight casting, fp8 and offloading, which live inside those submodules) and the
reference FLUX of :mod:`lumix_core.model.flux`. This is the only implementation of the LumiX
block maths in the project.

Batch layout: consecutive groups of ``group`` maps, ``x[g*M + j]`` = map ``j`` of scene ``g``.
Maps never attend to each other's tokens; they exchange information only through the
broadcast query and the Tensor LoRA mixing. Placement of the deltas follows the release:

* double block, image stream only: K/V deltas from the modulated, normed image input (the
  tensor fed to ``img_attn.qkv``), added after QK-norm and before RoPE; the image queries of
  every map replaced by the query-source map's; ``proj_tt_lora`` reads the output of
  ``img_attn.proj`` and its delta is added to it before the gate. The text stream is the
  plain block's.
* single block: the whole sequence (text + image) is adapted the same way around
  ``linear1`` / ``linear2`` and takes its queries from the query-source map.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional, Protocol

import torch
from einops import rearrange
from torch import Tensor, nn

from ..maps import check_group_batch
from . import flux_math
from .tensor_lora import TensorLoRA


class BlockAdapter(Protocol):
    """What the block functions need from an adapter: the two Tensor LoRAs of one block."""

    kv_tt_lora: TensorLoRA
    proj_tt_lora: TensorLoRA


AttentionFn = Callable[..., Tensor]


def takes_transformer_options(fn: AttentionFn) -> bool:
    """Whether ``fn`` accepts ``transformer_options`` (ComfyUI's attention gained it in 0.3.60).

    Callers ask once and pass ``transformer_options`` only where it is taken: the block functions
    do no signature inspection per call, which a ``torch.compile`` trace would have to follow.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "transformer_options" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def _attend(
    attention: AttentionFn, q: Tensor, k: Tensor, v: Tensor, pe: Tensor,
    mask: Optional[Tensor], transformer_options: Optional[dict],
) -> Tensor:
    if transformer_options is not None:
        return attention(q, k, v, pe=pe, mask=mask, transformer_options=transformer_options)
    return attention(q, k, v, pe=pe, mask=mask)


def _needs_autograd(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def broadcast_query(q: Tensor, group: int, query_index: int) -> Tensor:
    """Every map of a group gets the query of map ``query_index`` (``q`` is ``[G*M, ...]``).

    At inference the copy is written into ``q`` itself (no extra memory): at most two
    broadcasting ``copy_`` calls (the maps before and after the source), whatever the group
    and head counts. Under autograd a new tensor is built so the gradient flows back to the
    query-source map only.
    """
    if group == 1:
        return q
    G = q.shape[0] // group
    qg = q.unflatten(0, (G, group))  # [G, M, ...]
    src = qg[:, query_index : query_index + 1]  # [G, 1, ...]
    if _needs_autograd(q):
        return src.expand_as(qg).reshape(q.shape)
    if query_index > 0:
        qg[:, :query_index].copy_(src)
    if query_index < group - 1:
        qg[:, query_index + 1 :].copy_(src)
    return q


Strength = "float | Tensor"  # a 0-dim tensor under torch.compile (see lumix_core.model.tensor_lora)


def _add_kv_deltas(lora: TensorLoRA, src: Tensor, k: Tensor, v: Tensor, strength: Strength) -> tuple[Tensor, Tensor]:
    """K/V deltas from ``src`` (the tensor fed to the QKV projection), per head, K first."""
    d = k.shape[1] * k.shape[3]
    z = lora.codes(src)
    if _needs_autograd(src, k, v, z):
        H = k.shape[1]
        dk = rearrange(lora.delta(z, k.dtype, strength, slice(0, d)), "B L (H D) -> B H L D", H=H)
        dv = rearrange(lora.delta(z, v.dtype, strength, slice(d, 2 * d)), "B L (H D) -> B H L D", H=H)
        return k + dk, v + dv
    lora.add_heads_delta_(k, z, strength, slice(0, d))
    lora.add_heads_delta_(v, z, strength, slice(d, 2 * d))
    return k, v


def _add_proj_delta(lora: TensorLoRA, out: Tensor, strength: Strength) -> Tensor:
    """``out + proj_tt_lora(out)``: the release feeds the projection's output to the adapter."""
    z = lora.codes(out)
    if _needs_autograd(out, z):
        return out + lora.delta(z, out.dtype, strength)
    return lora.add_delta_(out, z, strength)


def _nan_guard(x: Tensor) -> Tensor:
    # Same guard as the hosts' FLUX blocks, so fp16 results match theirs.
    if x.dtype == torch.float16:
        return torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


def double_block_forward(
    block: nn.Module,
    img: Tensor,
    txt: Tensor,
    vec: Tensor,
    pe: Tensor,
    *,
    group: int,
    query_index: int,
    adapter: Optional[BlockAdapter] = None,
    strength: Strength = 1.0,
    share_query: bool = True,
    attn_mask: Optional[Tensor] = None,
    attention: AttentionFn = flux_math.attention,
    transformer_options: Optional[dict] = None,
) -> tuple[Tensor, Tensor]:
    """A FLUX double-stream block with Query-Broadcast Attention and Tensor LoRA.

    ``adapter=None`` with ``share_query=True`` is QBA alone; ``share_query=False`` with an
    adapter is "Tensor LoRA without QBA" (an ablation).
    """
    check_group_batch(img.shape[0], group)
    H = block.num_heads
    img_mod1, img_mod2 = block.img_mod(vec)
    txt_mod1, txt_mod2 = block.txt_mod(vec)

    img_modulated = flux_math.modulate(block.img_norm1(img), img_mod1)
    img_q, img_k, img_v = flux_math.split_heads(block.img_attn.qkv(img_modulated), H)
    img_q, img_k = block.img_attn.norm(img_q, img_k, img_v)
    if adapter is not None:
        img_k, img_v = _add_kv_deltas(adapter.kv_tt_lora, img_modulated, img_k, img_v, strength)
    if share_query:
        img_q = broadcast_query(img_q, group, query_index)

    txt_modulated = flux_math.modulate(block.txt_norm1(txt), txt_mod1)
    txt_q, txt_k, txt_v = flux_math.split_heads(block.txt_attn.qkv(txt_modulated), H)
    txt_q, txt_k = block.txt_attn.norm(txt_q, txt_k, txt_v)

    flipped = bool(getattr(block, "flipped_img_txt", False))
    first, second = ((img_q, img_k, img_v), (txt_q, txt_k, txt_v)) if flipped else (
        (txt_q, txt_k, txt_v), (img_q, img_k, img_v))
    q, k, v = (torch.cat((a, b), dim=2) for a, b in zip(first, second))
    del img_q, img_k, img_v, txt_q, txt_k, txt_v, first, second
    attn = _attend(attention, q, k, v, pe, attn_mask, transformer_options)
    del q, k, v
    if flipped:
        img_attn, txt_attn = attn[:, : img.shape[1]], attn[:, img.shape[1]:]
    else:
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]

    img_proj = block.img_attn.proj(img_attn)
    if adapter is not None:
        img_proj = _add_proj_delta(adapter.proj_tt_lora, img_proj, strength)
    img = img + img_mod1.gate * img_proj
    del img_proj, img_attn  # free before the MLP, where the block peaks
    img = img + img_mod2.gate * block.img_mlp(flux_math.modulate(block.img_norm2(img), img_mod2))

    txt = txt + txt_mod1.gate * block.txt_attn.proj(txt_attn)
    txt = txt + txt_mod2.gate * block.txt_mlp(flux_math.modulate(block.txt_norm2(txt), txt_mod2))
    return img, _nan_guard(txt)


def single_block_forward(
    block: nn.Module,
    x: Tensor,
    vec: Tensor,
    pe: Tensor,
    *,
    group: int,
    query_index: int,
    adapter: Optional[BlockAdapter] = None,
    strength: Strength = 1.0,
    share_query: bool = True,
    attn_mask: Optional[Tensor] = None,
    attention: AttentionFn = flux_math.attention,
    transformer_options: Optional[dict] = None,
) -> Tensor:
    """A FLUX single-stream block (``x`` = text tokens then image tokens) with QBA + Tensor LoRA."""
    check_group_batch(x.shape[0], group)
    H = block.num_heads
    mod, _ = block.modulation(vec)
    x_mod = flux_math.modulate(block.pre_norm(x), mod)
    qkv, mlp = torch.split(block.linear1(x_mod), [3 * block.hidden_size, block.mlp_hidden_dim], dim=-1)
    q, k, v = flux_math.split_heads(qkv, H)
    q, k = block.norm(q, k, v)
    if adapter is not None:
        k, v = _add_kv_deltas(adapter.kv_tt_lora, x_mod, k, v, strength)
    if share_query:
        q = broadcast_query(q, group, query_index)
    attn = _attend(attention, q, k, v, pe, attn_mask, transformer_options)
    del q, k, v, qkv
    output = block.linear2(torch.cat((attn, block.mlp_act(mlp)), 2))
    if adapter is not None:
        output = _add_proj_delta(adapter.proj_tt_lora, output, strength)
    return _nan_guard(x + mod.gate * output)

"""The block patches under torch.compile and across re-created models, without ComfyUI.

What ComfyUI's TorchCompileModel needs from a patch: Dynamo traces it into one graph (no break:
no Python-side cache lookups, no signature inspection per call), the strength is read at run time
(a changed strength must not replay a graph with the old number baked in), and the compiled result
equals eager. ``aot_eager`` keeps the tests fast; tracing, guards and caches are the backend-independent part.
"""
import pytest
import torch
from helpers import block_adapter, block_inputs, blocks
from pack_import import pack_module

from lumix_core.maps import RELEASE
from lumix_core.model.flux_math import attention as lumix_attention

patches = pack_module("nodes._patches")


def _run(patch_double, patch_single, img, txt, vec, pe):
    """A two-block model call as ComfyUI's FLUX makes it: double block, then single block on [txt, img]."""
    out = patch_double({"img": img, "txt": txt, "vec": vec, "pe": pe, "attn_mask": None}, {})
    x = torch.cat((out["txt"], out["img"]), dim=1)
    return patch_single({"img": x, "vec": vec, "pe": pe, "attn_mask": None}, {})["img"]


@pytest.fixture()
def setup():
    double, single = blocks()
    adapter = block_adapter().requires_grad_(False)
    make = lambda s: (patches.LumiXBlockPatch("double", 0, double, adapter.for_double(0), RELEASE, s,  # noqa: E731
                                              lumix_attention),
                      patches.LumiXBlockPatch("single", 0, single, adapter.for_single(0), RELEASE, s,
                                              lumix_attention))
    return make, block_inputs(10)


def test_a_patched_model_call_traces_into_one_graph(setup):
    make, inputs = setup
    torch._dynamo.reset()
    with torch.inference_mode():  # ComfyUI runs nodes there: factors and activations without version counters
        explained = torch._dynamo.explain(_run)(*make(1.0), *inputs)
    assert explained.graph_break_count == 0, [str(r.reason)[:200] for r in explained.break_reasons]
    assert explained.graph_count == 1


def _skip_patch_guards(entries):
    """ComfyUI 0.33's TorchCompileModel drops every guard on ``transformer_options``, where the patches live."""
    return ["patch_" not in entry.name for entry in entries]


def test_compiled_patches_equal_eager_and_follow_a_changed_strength(setup):
    make, inputs = setup
    torch._dynamo.reset()
    compiled = torch.compile(_run, backend="aot_eager", fullgraph=True, options={"guard_filter_fn": _skip_patch_guards})
    with torch.inference_mode():
        for strength in (1.0, 0.5, 0.0):
            eager = _run(*make(strength), *[t.clone() for t in inputs])
            got = compiled(*make(strength), *[t.clone() for t in inputs])
            torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(_run(*make(1.0), *inputs), _run(*make(0.5), *inputs), atol=1e-4)


def test_a_patch_binds_to_the_model_that_runs():
    double, single = blocks()
    other_double, _ = blocks()
    adapter = block_adapter().requires_grad_(False)
    patch = patches.LumiXBlockPatch("double", 0, double, adapter.for_double(0), RELEASE, 0.8, lumix_attention)
    model, other = torch.nn.Module(), torch.nn.Module()
    model.double_blocks, model.single_blocks = torch.nn.ModuleList([double]), torch.nn.ModuleList([single])
    other.double_blocks, other.single_blocks = torch.nn.ModuleList([other_double]), torch.nn.ModuleList([single])
    assert patch.bound_to(model) is patch
    sibling = patch.bound_to(other)
    assert sibling.block is other_double and sibling.lora is patch.lora and sibling.strength == 0.8
    assert patch.bound_to(other) is sibling  # the same object on every run: compiled graphs' guards hold
    options = {"transformer_options": {"patches_replace": {"dit": {("double_block", 0): patch}}}}
    assert patches.bind_block_patches(options, other) == 1
    assert options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)] is sibling
    img, txt, vec, pe = block_inputs(5)
    ref = patches.LumiXBlockPatch("double", 0, other_double, adapter.for_double(0), RELEASE, 0.8, lumix_attention)
    args = {"img": img, "txt": txt, "vec": vec, "pe": pe}
    assert torch.equal(sibling(dict(args), {})["img"], ref(dict(args), {})["img"])

"""LumiX beside other ways of changing a FLUX inside a real ComfyUI (COMFYUI_PATH): a LoRA stacked
before or after it, and models LumiX cannot patch.

LoRA: the truth is LumiX on a FLUX with the LoRA merged into its weights by hand; core
LoraLoaderModelOnly before or after LumiX Load Adapter must sample exactly that, since LumiX
recomputes each block from the block's own (patched) layers. A transformer without FLUX.1's
per-block structure (Nunchaku's quantized FLUX runs a fused model behind a wrapper module) must be
refused with a message that says what to connect, before any file is read.
"""
import compat_packs as C  # skips the module without COMFYUI_PATH (through lumix_host)
import lumix_host as H
import pytest
import torch


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return H.models_folder(tmp_path_factory, "models_lumix_compat")


def test_a_lora_before_or_after_lumix_samples_lumix_on_the_merged_weights(pack, models, tmp_path):
    lora = C.random_lora(H.tiny_flux(seed=4))
    name = C.write_lora(tmp_path, lora)
    x = H.maps_latent(pack)
    truth = C.sample(H.load_lumix(pack, C.merged_flux(4, lora)), x)
    before = C.sample(H.load_lumix(pack, C.with_lora(H.tiny_flux(seed=4), name)), x)
    after = C.sample(C.with_lora(H.load_lumix(pack, H.tiny_flux(seed=4)), name), x)
    without = C.sample(H.load_lumix(pack, H.tiny_flux(seed=4)), x)
    print(f"LoRA then LumiX vs truth: max abs {C.diff(before, truth)[0]:.3g}; LumiX then LoRA: "
          f"{C.diff(after, truth)[0]:.3g}; the LoRA's own effect: max rel {C.diff(without, truth)[1]:.3g}")
    assert not torch.allclose(without, truth, rtol=0, atol=1e-3)  # the LoRA changes the result
    assert torch.equal(before, truth)
    assert torch.equal(after, truth)


class WrappedFluxStandIn(torch.nn.Module):
    """Nunchaku's ``wrappers.flux.ComfyFluxWrapper`` as LumiX sees it: ``model`` (a diffusers-style
    transformer with ``transformer_blocks`` / ``single_transformer_blocks`` of fused quantized layers),
    ``config``, ``loras``, ``dtype``, and a ``forward`` with ComfyUI's diffusion-model signature.
    """

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(H.HIDDEN, H.HIDDEN)])
        self.model.single_transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(H.HIDDEN, H.HIDDEN)])
        self.config, self.loras, self.dtype = dict(H.TINY_FLUX), [], torch.float32

    def forward(self, x, timestep, context, y, guidance=None, control=None, transformer_options={}, **kwargs):
        raise AssertionError("LumiX must refuse this model before it is sampled")


def nunchaku_like():
    """A ComfyUI MODEL built as ComfyUI-nunchaku's loader builds it: a FLUX model config and
    ``model_base.Flux`` whose ``diffusion_model`` is replaced by the wrapper (``nodes/models/flux.py``)."""
    model = H.tiny_flux(seed=5)
    model.model.diffusion_model = WrappedFluxStandIn()
    return model


def flux_with_fused_blocks():
    """A ComfyUI FLUX whose blocks were swapped for fused modules (no ``img_attn``, ``linear1``...)."""
    model = H.tiny_flux(seed=5)
    dm = model.model.diffusion_model
    dm.double_blocks = torch.nn.ModuleList([torch.nn.Linear(H.HIDDEN, H.HIDDEN)])
    dm.single_blocks = torch.nn.ModuleList([torch.nn.Linear(H.HIDDEN, H.HIDDEN)])
    return model


@pytest.mark.parametrize("build, says", [
    (nunchaku_like, r"the connected FLUX MODEL runs a WrappedFluxStandIn transformer without them .*Nunchaku"),
    (flux_with_fused_blocks, r"LumiX works on FLUX.1 only, .*double-stream blocks lack \['img_mod'"),
], ids=["nunchaku-wrapper", "fused-blocks"])
def test_a_flux_without_flux1_blocks_is_refused_with_what_to_connect(pack, build, says):
    model = build()
    with pytest.raises(ValueError, match=says) as refused:
        pack["LumiXLoadAdapter"]().load(model, "no-such-adapter.safetensors", 1.0)  # refused before the file
    print(f"refusal: {refused.value}")
    assert "UNETLoader" in str(refused.value) and "GGUF" in str(refused.value)
    assert not model.model_options.get("transformer_options", {}).get("patches_replace")

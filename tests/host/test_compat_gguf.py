"""LumiX on GGUF models (city96/ComfyUI-GGUF) inside a real ComfyUI (COMFYUI_PATH).

A tiny FLUX is written as a ``.gguf`` the way city96's tools lay it out (``tools/convert.py`` for the
F16 file, its patched llama-quantize for Q8_0 / Q4_0) and loaded with the pack's own Unet Loader (GGUF)
node; its truth is the same weights in a ``.safetensors`` file through core UNETLoader. F16 must sample
bit-identically. A quantized file must sample exactly like the model of its dequantized weights (LumiX
adds no error of its own), and so deviate from the unquantized source only by the quantization noise
the plain FLUX of the same file shows. Skips, saying why, without the pack or the ``gguf`` package.
"""
import compat_packs as C  # skips the module without COMFYUI_PATH (through lumix_host)
import lumix_host as H
import pytest
import torch
from safetensors.torch import save_file

# isort: split
import folder_paths  # noqa: E402

import nodes as comfy_nodes  # noqa: E402  (ComfyUI's nodes.py)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return H.models_folder(tmp_path_factory, "models_lumix_gguf")


@pytest.fixture
def unets(tmp_path, monkeypatch):
    """A diffusion_models folder for this test, and detection of the tiny FLUX in files."""
    C.tiny_flux_detection(monkeypatch)
    folder_paths.add_model_folder_path("diffusion_models", str(tmp_path))
    return tmp_path


@pytest.fixture
def gguf_loader():
    return C.other_pack("gguf", needs=("gguf",))["UnetLoaderGGUF"]


def gguf_unet(loader, path):
    model = H.call_node(loader, unet_name=path.name)[0]
    qkv = model.model.diffusion_model.double_blocks[0].img_attn.qkv
    assert type(qkv.weight).__name__ == "GGMLTensor", type(qkv.weight)  # the pack's ops hold the file's tensors
    return model


def safetensors_unet(folder, name, sd):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / name))
    return comfy_nodes.UNETLoader().load_unet(name, "default")[0]


def test_f16_gguf_samples_lumix_bit_identical_to_the_safetensors_model(pack, models, unets, gguf_loader):
    import gguf

    sd = C.flux_file_state_dict(H.tiny_flux(seed=3))
    path = C.write_gguf(unets / "tiny-F16.gguf", sd, gguf.GGMLQuantizationType.F16)
    f16 = {k: v.half() if C.gguf_type(k, v, gguf.GGMLQuantizationType.F16) == gguf.GGMLQuantizationType.F16
           else v for k, v in sd.items()}  # the same model in the same dtypes, as a safetensors file
    from_gguf, from_st = gguf_unet(gguf_loader, path), safetensors_unet(unets, "tiny-f16.safetensors", f16)
    x = H.maps_latent(pack)
    ours, truth = C.sample(H.load_lumix(pack, from_gguf), x), C.sample(H.load_lumix(pack, from_st), x)
    plain = C.sample(from_gguf, x)
    print(f"GGUF F16 + LumiX vs safetensors F16 + LumiX, 4 euler steps: max abs {C.diff(ours, truth)[0]:.3g}")
    assert torch.equal(C.sample(from_st, x), plain)  # the plain models agree: same weights, same arithmetic
    assert not torch.equal(ours, plain)  # the adapter is applied
    assert torch.equal(ours, truth)


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0"])
def test_quantized_gguf_samples_lumix_within_its_quantization_noise(pack, models, unets, gguf_loader, quant):
    import gguf

    source = H.tiny_flux(seed=3)
    path = C.write_gguf(unets / f"tiny-{quant}.gguf", C.flux_file_state_dict(source), gguf.GGMLQuantizationType[quant])
    quantized = gguf_unet(gguf_loader, path)
    dequantized = safetensors_unet(unets, f"tiny-{quant}-dequantized.safetensors", C.gguf_weights(path))
    x = H.maps_latent(pack)
    ours = C.sample(H.load_lumix(pack, quantized), x)
    exact = C.diff(ours, C.sample(H.load_lumix(pack, dequantized), x))
    lumix_noise = C.diff(ours, C.sample(H.load_lumix(pack, source), x))
    plain_noise = C.diff(C.sample(quantized, x), C.sample(source, x))
    print(f"GGUF {quant} + LumiX: vs LumiX on its dequantized weights max abs {exact[0]:.3g}; vs the fp32 source "
          f"max rel {lumix_noise[1]:.3g}, where the plain FLUX of the file is {plain_noise[1]:.3g} off its source "
          f"(ratio {lumix_noise[1] / plain_noise[1]:.2f})")
    assert exact == (0.0, 0.0)  # LumiX on the pack's dequantized weights: no error of its own
    assert 0 < lumix_noise[1] <= 2 * plain_noise[1]  # of the order of the quantization noise of the FLUX itself


def test_a_lora_on_a_quantized_gguf_either_side_of_lumix_is_merged_exactly(pack, models, unets, gguf_loader):
    """ComfyUI-GGUF adds a LoRA to a quantized weight as it dequantizes it, at every call; LumiX calls the layers."""
    import gguf

    source = H.tiny_flux(seed=3)
    path = C.write_gguf(unets / "tiny-lora-Q8_0.gguf", C.flux_file_state_dict(source), gguf.GGMLQuantizationType.Q8_0)
    lora = C.random_lora(source)
    name = C.write_lora(unets, lora)
    weights = C.gguf_weights(path)
    for layer, (up, down) in lora.items():
        weights[f"{layer}.weight"] = weights[f"{layer}.weight"] + C.lora_delta(up, down)
    x = H.maps_latent(pack)
    truth = C.sample(H.load_lumix(pack, safetensors_unet(unets, "tiny-lora-merged.safetensors", weights)), x)
    before = C.sample(H.load_lumix(pack, C.with_lora(gguf_unet(gguf_loader, path), name)), x)
    after = C.sample(C.with_lora(H.load_lumix(pack, gguf_unet(gguf_loader, path)), name), x)
    print(f"GGUF Q8_0, LoRA then LumiX vs LumiX on the merged dequantized weights: max abs "
          f"{C.diff(before, truth)[0]:.3g}; LumiX then LoRA: {C.diff(after, truth)[0]:.3g}")
    assert torch.equal(before, truth)
    assert torch.equal(after, truth)

"""Reference FLUX: file round trips (BFL and ComfyUI layouts) and adapter attach/detach."""
import pytest
import torch
from helpers import tiny_adapter, tiny_flux
from safetensors.torch import save_file

from lumix_core.io.safetensors_io import CheckpointError
from lumix_core.latents import image_ids
from lumix_core.maps import RELEASE, MapSet
from lumix_core.model.adapter import LumiXAdapter, default_spec
from lumix_core.model.flux_io import COMFY_PREFIX, load_flux, save_flux

M = RELEASE.size


def inputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, 16, 64, generator=g)
    txt = torch.randn(batch, 4, 32, generator=g)
    return dict(img=img, img_ids=image_ids(batch, 8, 8), txt=txt, txt_ids=torch.zeros(batch, 4, 3),
                timesteps=torch.rand(batch, generator=g), y=torch.randn(batch, 16, generator=g),
                guidance=torch.full((batch,), 3.5))


def forward(model, batch=M, seed=0):
    with torch.no_grad():
        return model(**inputs(batch, seed))


@pytest.mark.parametrize("comfy", [False, True])
def test_round_trip_bit_exact(tmp_path, comfy):
    model = tiny_flux()
    path = save_flux(model, tmp_path / "flux.safetensors", comfy_prefix=comfy)
    loaded = load_flux(path)
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert torch.equal(forward(model), forward(loaded))


def test_loads_files_without_our_metadata_and_comfy_norm_spelling(tmp_path):
    """A BFL file has no lumix metadata (config inferred from shapes); ComfyUI 0.33 spells the
    QK-norm parameter ``.weight``."""
    model = tiny_flux()
    state = {COMFY_PREFIX + (k[:-5] + "weight" if k.endswith("_norm.scale") else k): v
             for k, v in model.state_dict().items()}
    state["model.diffusion_model.extra_first_stage.x"] = torch.zeros(1)  # other parts of a checkpoint
    save_file(state, str(tmp_path / "ckpt.safetensors"))
    # only transformer keys under the prefix are read
    with pytest.raises(CheckpointError, match="unexpected 'extra_first_stage.x'"):
        load_flux(tmp_path / "ckpt.safetensors")
    del state["model.diffusion_model.extra_first_stage.x"]
    state["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "ckpt2.safetensors"))
    loaded = load_flux(tmp_path / "ckpt2.safetensors")
    assert loaded.config.hidden_size == 64 and loaded.config.depth == 2
    assert torch.equal(forward(model), forward(loaded))


def test_refuses_non_flux(tmp_path):
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(tmp_path / "sd.safetensors"))
    with pytest.raises(CheckpointError, match="SD1.5/SDXL/SD3"):
        load_flux(tmp_path / "sd.safetensors")
    save_file({"double_blocks.0.processor.kv_tt_lora.G1": torch.zeros(5, 5, 8)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(CheckpointError, match="LumiX adapter"):
        load_flux(tmp_path / "a.safetensors")


def test_attach_detach_leaves_model_bit_identical():
    model = tiny_flux()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = forward(model)
    adapter = tiny_adapter(model)
    model.attach(adapter)
    patched = forward(model)
    assert (patched - plain).abs().max() > 1e-4
    assert model.detach() is adapter
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(model.state_dict()) == set(before)  # adapter weights never join the backbone
    assert torch.equal(forward(model), plain)


def test_zero_adapter_single_map_is_untouched_flux():
    model = tiny_flux()
    maps = MapSet(("color",))
    spec = default_spec(maps=maps, rank=4, hidden=64, double_blocks=2, single_blocks=2)
    adapter = LumiXAdapter(spec)  # published init: G3 = 0
    plain = forward(model)
    with model.attached(adapter):
        torch.testing.assert_close(forward(model), plain, rtol=1e-5, atol=1e-5)
    assert model.lumix is None


def test_attach_refuses_mismatched_adapter():
    model = tiny_flux()
    with pytest.raises(ValueError, match="hidden size 128 does not match the model's 64"):
        model.attach(LumiXAdapter(default_spec(hidden=128, rank=2, double_blocks=2, single_blocks=2)))
    with pytest.raises(ValueError, match="double block 2 but the model has only 2"):
        model.attach(LumiXAdapter(default_spec(hidden=64, rank=2, double_blocks=3, single_blocks=2)))


def test_adapted_model_batch_must_be_whole_groups():
    model = tiny_flux()
    model.attach(tiny_adapter(model))
    with pytest.raises(ValueError, match="not a multiple of the map count 5"):
        forward(model, batch=6)

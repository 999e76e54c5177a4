"""lumix_core.sampling.layout / model.flux_check / model.adapter_cache: the host-independent side of the ComfyUI
nodes."""
import os
import time

import pytest
import torch
from helpers import tiny_flux

from lumix_core.io.safetensors_io import CheckpointError
from lumix_core.latents import latent_in, latent_out
from lumix_core.maps import RELEASE, MapSet
from lumix_core.model.adapter import LumiXAdapter, default_spec
from lumix_core.model.adapter_cache import AdapterCache
from lumix_core.model.checkpoint import ModelShape, save_adapter
from lumix_core.model.flux_check import NotFluxError, flux1_shape
from lumix_core.sampling.layout import (
    MAPS_KEY,
    center_crop_box,
    check_same_maps,
    check_scene_latent,
    finish_group_images,
    group_photo_latents,
    maps_latent_shape,
    maps_of,
    noise_is_shared,
    noise_keys,
    objective_warnings,
    one_step_sigmas,
    photo_rgb,
    pin_inputs,
    release_sigmas,
    require_finite_groups,
    require_flux_latent,
    require_whole_scenes,
    restore_slot,
    scene_batch_index,
    slot_latents,
    tag_maps,
    tagged_maps,
)
from lumix_core.sampling.sampler import ONE_STEP_TIMESTEPS, decompose_one_step, schedule_for


def test_scene_batch_index_gives_one_noise_index_per_scene():
    assert scene_batch_index(2, RELEASE) == [0] * 5 + [1] * 5
    assert scene_batch_index(3, MapSet.parse("albedo,color")) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="scenes must be >= 1"):
        scene_batch_index(0, RELEASE)


def test_latent_shape_and_size_message():
    assert maps_latent_shape(512, 256, 2, RELEASE) == (10, 16, 32, 64)
    with pytest.raises(ValueError, match=r"width 500 not a multiple of 16 pixels.*Use e\.g\. 496x512"):
        maps_latent_shape(500, 512, 1, RELEASE)


def test_photo_latents_sit_in_the_color_slot_and_come_back():
    photo = torch.randn(2, 16, 4, 6)
    grouped = group_photo_latents(photo, RELEASE)
    assert grouped.shape == (10, 16, 4, 6)
    assert torch.equal(grouped[2], photo[0]) and torch.equal(grouped[7], photo[1])
    assert grouped[[0, 1, 3, 4, 5, 6, 8, 9]].abs().sum() == 0
    assert torch.equal(slot_latents(grouped, RELEASE, "color"), photo)
    with pytest.raises(ValueError, match="batch of 9 is not a multiple of the map count 5"):
        slot_latents(grouped[:9], RELEASE, "color")


def test_pin_inputs_rewrites_only_the_pinned_slot_of_every_chunk():
    maps = MapSet.parse("albedo,color,depth")
    N, K = 2, 2  # two scenes, cond + uncond chunks
    x = torch.randn(K * N * 3, 4, 2, 2)
    t = torch.full((K * N * 3,), 0.7)
    clean = torch.randn(N, 4, 2, 2)
    x2, t2 = pin_inputs(x, t, clean, maps, "color", chunks=K)
    pinned = [1, 4, 7, 10]
    assert torch.equal(x2[pinned], clean.repeat(K, 1, 1, 1))
    assert (t2[pinned] == 0).all() and (t2[[0, 2, 3, 5, 6, 8, 9, 11]] == 0.7).all()
    others = [i for i in range(12) if i not in pinned]
    assert torch.equal(x2[others], x[others])
    assert not torch.equal(x2, x) and (t == 0.7).all()  # inputs untouched
    with pytest.raises(ValueError, match="resized or re-batched"):
        pin_inputs(x[:, :, :1], t, clean, maps)
    with pytest.raises(ValueError, match="does not hold whole copies"):
        pin_inputs(x[:10], t[:10], clean, maps)
    with pytest.raises(ValueError, match="reports 1 cond/uncond"):
        pin_inputs(x, t, clean, maps, chunks=1)


def test_release_sigmas_follow_the_release_schedule_and_denoise():
    full = release_sigmas(512, 512, 50)
    assert full.dtype == torch.float32 and full.shape == (51,)
    torch.testing.assert_close(full, schedule_for(512, 512, 50, "release").float())
    assert full[0] == 1.0 and full[-1] == 0.0
    half = release_sigmas(512, 512, 10, 0.5)
    torch.testing.assert_close(half, schedule_for(512, 512, 20, "release")[-11:].float())
    assert release_sigmas(512, 512, 10, 0.0).numel() == 0
    assert not torch.equal(release_sigmas(512, 512, 8), release_sigmas(512, 512, 8, kind="flux"))


def test_noise_sharing_check():
    n = torch.randn(2, 1, 3).repeat_interleave(5, dim=0)
    assert noise_is_shared(n, 5)
    n[3] += 1
    assert not noise_is_shared(n, 5)
    assert noise_is_shared(torch.randn(4, 2), 1)


def test_noise_keys_follow_equal_neighbours():
    n = torch.randn(3, 2, 2)
    assert noise_keys(n[[0, 0, 1, 1, 1, 2]]) == [0, 0, 1, 1, 1, 2]
    assert noise_keys(n[[0, 1, 0]]) == [0, 1, 2]  # only neighbours count


@pytest.mark.parametrize("keys", [[0] * 5 + [1] * 5, [7] * 5, [0, 1, 2, 3, 4], list(range(10)), [0] * 10])
def test_whole_scenes_and_stock_latents_pass(keys):
    require_whole_scenes(keys, RELEASE, "the LATENT")


@pytest.mark.parametrize("start, length", [(3, 5), (1, 5), (4, 5), (2, 10)])
def test_a_slice_of_a_lumix_latent_off_scene_boundaries_is_refused(start, length):
    """Latent From Batch on a 3-scene LumiX latent: batch_index is sliced with the samples."""
    keys = [0] * 5 + [1] * 5 + [2] * 5
    sliced = keys[start:start + length]
    with pytest.raises(ValueError) as info:
        require_whole_scenes(sliced, RELEASE, "the LATENT to sample")
    text = str(info.value)
    assert text.startswith(f"the LATENT to sample is not whole LumiX scenes: its noise indices {sliced} put maps of "
                           "different scenes into one group of 5, as when Latent From Batch takes a slice"), text
    assert "Slice by whole scenes: batch_index = k x 5 and length = n x 5" in text
    require_whole_scenes(keys[5:10], RELEASE, "the LATENT")  # one whole scene is fine


def test_a_latent_dict_is_checked_by_size_and_batch_index():
    latent = {"samples": torch.zeros(10, 16, 2, 2), "batch_index": [0] * 5 + [1] * 5}
    assert check_scene_latent(latent, RELEASE, "x") == 2
    assert check_scene_latent({"samples": torch.zeros(5, 16, 2, 2)}, RELEASE, "x") == 1
    with pytest.raises(ValueError, match="not whole LumiX scenes"):
        check_scene_latent({"samples": torch.zeros(5, 16, 2, 2), "batch_index": [0, 0, 1, 1, 1]}, RELEASE, "x")
    with pytest.raises(ValueError, match="not a multiple of the map count 5"):
        check_scene_latent({"samples": torch.zeros(4, 16, 2, 2), "batch_index": [0] * 4}, RELEASE, "x")


def test_a_latent_of_another_family_is_refused_as_not_flux():
    require_flux_latent(torch.zeros(5, 16, 8, 8), "the LATENT")
    with pytest.raises(ValueError) as info:
        require_flux_latent(torch.zeros(1, 4, 8, 8), "LumiX Decode Maps: the LATENT")
    assert str(info.value).startswith("LumiX Decode Maps: the LATENT is not a FLUX latent: it has shape (1, 4, 8, 8), "
                                      "an SD 1.5 / SDXL latent, as Empty Latent Image or VAE Encode with an SD VAE "
                                      "make it; a FLUX latent has 16 channels."), info.value
    with pytest.raises(ValueError, match="a latent of another model family"):
        require_flux_latent(torch.zeros(1, 32, 8, 8), "x")
    with pytest.raises(ValueError, match="not a FLUX latent"):
        require_flux_latent(torch.zeros(1, 16, 2, 8, 8), "x")


def test_center_crop_to_multiples_of_16():
    assert center_crop_box(512, 512) == (0, 0, 512, 512)
    assert center_crop_box(650, 487) == (5, 3, 640, 480)
    with pytest.raises(ValueError, match="smaller than 16x16"):
        center_crop_box(15, 100)


def test_map_set_travels_with_the_latent_and_must_match_the_adapter():
    assert maps_of({}) == RELEASE
    assert maps_of({MAPS_KEY: "albedo,color"}).names == ("albedo", "color")
    with pytest.raises(ValueError, match="not a valid map set"):
        maps_of({MAPS_KEY: "albedo,depth"})
    with pytest.raises(ValueError, match=r"holds maps albedo,color \(M=2\).*trained for albedo,irradiance"):
        check_same_maps(MapSet.parse("albedo,color"), RELEASE, "lumix.safetensors")


def test_finish_group_images_splits_scenes_and_blacks_out_missing_maps():
    maps = MapSet.parse("albedo,color,depth")
    images = torch.rand(6, 8, 8, 3)
    out = finish_group_images(images, maps, ("albedo", "irradiance", "color", "depth", "normal"))
    assert torch.equal(out["albedo"].image, images[0::3]) and torch.equal(out["color"].image, images[1::3])
    assert out["depth"].mask.shape == (2, 8, 8) and out["depth"].mask.max() == 1.0
    assert out["irradiance"].image.abs().sum() == 0 and out["irradiance"].info == {"missing": 1.0}
    assert out["normal"].image.shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="batch of 5 is not a multiple of the map count 3"):
        finish_group_images(images[:5], maps, ("albedo",))


def test_flux1_shape_reads_blocks_and_refuses_other_models():
    model = tiny_flux(depth=2, depth_single_blocks=3)
    assert flux1_shape(model) == ModelShape(64, 2, 3)
    with pytest.raises(NotFluxError, match="FLUX.1 only, but the connected MODEL is SDXL"):
        flux1_shape(torch.nn.Linear(2, 2), "SDXL")
    del model.double_blocks[0].img_mod
    with pytest.raises(NotFluxError, match=r"double-stream blocks lack \['img_mod'\]"):
        flux1_shape(model, "Chroma")


def _adapter_file(path, hidden=64, maps=RELEASE, doubles=1, singles=1, seed=0):
    adapter = LumiXAdapter(default_spec(maps=maps, rank=2, hidden=hidden, double_blocks=doubles, single_blocks=singles))
    adapter.reset_parameters(torch.Generator().manual_seed(seed))
    return save_adapter(adapter, path, overwrite=True)


def test_adapter_cache_loads_once_and_reloads_a_changed_file(tmp_path):
    path = _adapter_file(tmp_path / "a.safetensors")
    cache = AdapterCache()
    shape = ModelShape(64, 1, 1)
    first, info = cache.get(path, shape)
    again, _ = cache.get(path, shape)
    assert first is again and cache.loads == 1 and info.path.name == "a.safetensors"
    assert not any(p.requires_grad for p in first.parameters())
    time.sleep(0.01)
    _adapter_file(path, seed=1)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    reloaded, _ = cache.get(path, shape)
    assert reloaded is not first and cache.loads == 2 and len(cache) == 1
    with pytest.raises(CheckpointError, match=r"a.safetensors: adapter hidden size is 64 but the model's is 128"):
        cache.get(path, ModelShape(128, 1, 1))  # checked on a cache hit too
    with pytest.raises(CheckpointError, match="has 'single_blocks.1' but the model has only 1 single_blocks"):
        cache.get(_adapter_file(tmp_path / "b.safetensors", singles=2), shape)


def test_adapter_cache_refuses_pickles(tmp_path):
    path = tmp_path / "evil.safetensors"
    torch.save({"double_blocks.0.processor.kv_tt_lora.G1": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="pickle"):
        AdapterCache().get(path, ModelShape(64, 1, 1))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_photos_of_any_channel_count_become_cropped_rgb(channels):
    image = torch.rand(2, 40, 37, channels)
    rgb = photo_rgb(image)
    assert rgb.shape == (2, 32, 32, 3)
    crop = image[:, 4:36, 2:34]
    if channels <= 2:  # grey (+ alpha): three equal channels from the grey one
        assert torch.equal(rgb, crop[..., :1].expand(-1, -1, -1, 3))
    else:  # RGB (+ alpha): alpha dropped
        assert torch.equal(rgb, crop[..., :3])
    with pytest.raises(ValueError, match=r"photo: expected 1 or 2 or 3 or 4 channels"):
        photo_rgb(torch.rand(1, 32, 32, 5))


def test_non_finite_photos_and_latents_are_refused_naming_where():
    photo = torch.rand(3, 32, 32, 3)
    photo[1, 5, 5, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^the photo holds 1 NaN/inf value\(s\) of 9216 \(first in image 1\); "
                                         r"the node that made this IMAGE produced invalid pixels.*Nothing was encoded"):
        photo_rgb(photo)
    latent = torch.zeros(10, 16, 2, 2)
    latent[8, 0, 0, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"^the LATENT holds 1 NaN/inf value\(s\) of 640 "
                                         r"\(first in map depth of scene 1\); make it again"):
        require_finite_groups(latent, RELEASE, "the LATENT", "make it again")
    assert require_finite_groups(torch.zeros(10, 1), RELEASE, "x", "y") is not None


def test_the_map_set_travels_on_the_samples_tensor():
    samples = torch.zeros(4, 16, 2, 2)
    assert tagged_maps(samples) is None
    maps = MapSet.parse("albedo,color,depth,normal")
    assert tag_maps(samples, maps) is samples and tagged_maps(samples) == maps
    assert tagged_maps(samples.clone()) is None  # a new tensor from another node carries no tag


# ----------------------------------------------------------------------------- one-step adapters
def test_restore_slot_writes_the_pinned_latent_back_exactly():
    maps = MapSet.parse("albedo,color,depth")
    clean = torch.randn(2, 16, 2, 2)
    sampled = torch.randn(6, 16, 2, 2)
    out = restore_slot(sampled, clean, maps, "color")
    assert torch.equal(out[1::3], clean)
    assert torch.equal(out[0::3], sampled[0::3]) and torch.equal(out[2::3], sampled[2::3])
    assert not torch.equal(sampled[1::3], clean)  # a new tensor: the input is left alone
    with pytest.raises(ValueError, match=r"sampled latent \(4, 16, 2, 2\) is not 2 scene\(s\) of 3 maps"):
        restore_slot(sampled[:4], clean, maps, "color")


def test_a_hosts_euler_step_on_the_one_step_sigmas_is_decompose_one_step_bit_for_bit():
    """ComfyUI's arithmetic, written out: latent scaling in, CONST noise scaling with the noise disabled, the pin
    wrapper's inputs, denoised = x - t v, the k-diffusion Euler step, scaling out, the pinned slot restored."""
    maps = RELEASE
    g = torch.Generator().manual_seed(0)
    photo = torch.randn(2, 16, 4, 4, generator=g) * 2  # raw (VAE-space) photo latents of two scenes
    weight = torch.randn(16, 16, generator=g)

    def velocity(x, t, cond, guidance):  # any deterministic model; t is per item (the pinned slot gets 0)
        return torch.tanh(torch.einsum("bchw,cd->bdhw", x, weight) + t[:, None, None, None] + cond)

    sigmas = one_step_sigmas()
    assert sigmas.dtype == torch.float32 and sigmas.tolist() == list(ONE_STEP_TIMESTEPS) == [1.0, 0.0]
    latent = latent_in(group_photo_latents(photo, maps))  # process_latent_in of the LATENT
    x = sigmas[0] * torch.zeros_like(latent) + (1.0 - sigmas[0]) * latent  # noise_scaling, DisableNoise
    for i in range(len(sigmas) - 1):
        xin, tin = pin_inputs(x, torch.full((x.shape[0],), float(sigmas[i])), latent_in(photo), maps)
        denoised = xin - velocity(xin, tin, 0.25, 1.0) * tin[:, None, None, None]
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    host = restore_slot(latent_out(x), photo, maps, "color")
    core = latent_out(decompose_one_step(velocity, latent_in(photo), maps, 0.25))
    assert torch.equal(host[2::5], photo)
    assert torch.equal(host[[i for i in range(10) if i % 5 != 2]], core[[i for i in range(10) if i % 5 != 2]])


W = "a.safetensors is a "


@pytest.mark.parametrize("objective, sigmas, pinned, noise, wanted", [
    ("one-step", [1.0, 0.0], True, False, []),  # as trained
    ("one-step", [1.0, 0.5, 0.0], True, False, ["one-step adapter (trained for one call: the photo pinned, the other "
                                                "maps fed 0 at t = 1), but it is sampled with 2 steps"]),
    ("one-step", [0.6, 0.0], True, False, ["but its step starts at t = 0.6 instead of 1 (denoise < 1?)"]),
    ("one-step", [1.0, 0.0], True, True, ["but it is sampled from random noise instead of the zero input"]),
    ("one-step", [1.0, 0.0], False, False, ["it decomposes photos, but this latent has no pinned photo"]),
    ("one-step", [1.0, 0.3, 0.0], False, True, ["with 2 steps", "random noise", "no pinned photo"]),
    ("one-step", [], False, True, []),  # nothing is sampled
    ("flow-matching", [1.0, 0.0], True, True, ["multi-step (flow-matching) adapter, sampled here in 1 step: its maps "
                                               "come out as a blurred average"]),
    ("flow-matching", [1.0, 0.0], False, False, ["multi-step (flow-matching) adapter, sampled here in 1 step"]),
    ("flow-matching", [1.0, 0.5, 0.0], True, True, []),
    ("flow-matching", [1.0, 0.5, 0.0], False, False, []),  # DisableNoise is the user's business for multi-step adapters
    ("flow-matching", [0.4, 0.0], True, True, []),  # the last step of a split schedule: a refining pass
])
def test_objective_warnings_per_objective_steps_photo_and_noise(objective, sigmas, pinned, noise, wanted):
    texts = objective_warnings(objective, sigmas, pinned=pinned, noise=noise, adapter_name="a.safetensors")
    assert len(texts) == len(wanted), texts
    assert all(t.startswith(W) and w in t for w, t in zip(wanted, texts)), texts
    if objective == "one-step" and texts:
        assert all("LumiX" in t for t in texts)  # each says which node or input fixes it


def test_objective_warnings_refuse_an_unknown_objective():
    with pytest.raises(ValueError, match="unknown adapter objective 'distilled'"):
        objective_warnings("distilled", [1.0, 0.0], pinned=True, noise=False, adapter_name="a.safetensors")

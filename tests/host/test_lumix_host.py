"""The LumiX nodes inside a real ComfyUI (COMFYUI_PATH): loading, patching, sampling, pinning, refusals.

Everything runs through ComfyUI's own classes: the pack is loaded with ``nodes.load_custom_node``,
the tiny FLUX is ``comfy.supported_models.Flux`` + ``ModelPatcher``, sampling is
``comfy.sample`` / ``nodes.KSampler``. Tolerances are float32 round-off: the patched blocks are
recomputed from the host's submodules (the host fuses ``(1+scale)*x+shift`` into ``addcmul``,
lumix_core does not), so "equal" means equal to ~1e-6, and the measured maxima are printed.
Refusals are matched as ``ValueError``: the pack loaded by ComfyUI imports its own copy of
lumix_core (relative imports), so its ``CheckpointError`` is not this process's class object.
"""
import copy
import inspect
import logging
import sys

import lumix_host as H  # skips the module without COMFYUI_PATH
import pytest
import torch

# isort: split
import comfy.ldm.flux.math  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.utils  # noqa: E402

import nodes as comfy_nodes  # noqa: E402  (ComfyUI's nodes.py)
from lumix_core.latents import image_ids, unpack  # noqa: E402
from lumix_core.latents import pack as pack_tokens  # noqa: E402
from lumix_core.maps import RELEASE, MapSet  # noqa: E402
from lumix_core.model.checkpoint import load_adapter  # noqa: E402
from lumix_core.model.flux_io import load_flux  # noqa: E402
from lumix_core.model.qba import double_block_forward, single_block_forward  # noqa: E402

LUMIX_NODES = {"LumiXLoadAdapter", "LumiXPinPhoto", "LumiXEmptyMapsLatent", "LumiXPhotoToMapsLatent", "LumiXSampler",
               "LumiXReleaseSchedule", "LumiXOneStepSchedule", "LumiXDecodeMaps", "LumiXSplitMaps", "LumiXSaveMaps",
               "LumiXRelight", "LumiXRecompose", "LumiXConsistencyReport", "LumiXDecomposeShot", "LumiXSaveSequence"}
ATTENTION_TAKES_OPTIONS = "transformer_options" in inspect.signature(comfy.ldm.flux.math.attention).parameters
POS, NEG = H.conditioning(1), H.conditioning(2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return H.models_folder(tmp_path_factory, "models_lumix")


def host_module(pack, name):
    """A module of the pack as ComfyUI loaded it (e.g. ``_host``)."""
    base = sys.modules[pack["LumiXLoadAdapter"].__module__].__name__.rsplit(".", 1)[0]
    return sys.modules[f"{base}.{name}"]


def sample(model, latent, *, seed=0, steps=4, cfg=2.0, sampler="euler", scheduler="simple", noise=None):
    samples = latent["samples"]
    if noise is None:
        noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    with torch.no_grad():
        return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, POS, NEG, samples,
                                   disable_pbar=True, seed=seed)


def test_pack_loads_like_comfyui_and_registers_every_node(pack):
    import importlib.util

    import folder_paths

    assert LUMIX_NODES == set(pack)
    for name, cls in pack.items():
        assert comfy_nodes.NODE_CLASS_MAPPINGS[name] is cls
        assert cls.RELATIVE_PYTHON_MODULE == "custom_nodes.comfyui-lumix"
        assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS[name].startswith("LumiX ")
    assert "lumix" in folder_paths.folder_names_and_paths
    assert importlib.util.find_spec("nodes").origin.endswith("nodes.py")  # ComfyUI's nodes, not our folder


def test_identity_adapter_with_one_map_samples_like_the_unpatched_model(pack, models, monkeypatch):
    H.write_adapter(models / "identity.safetensors", maps=MapSet.parse("color"), g3=0.0)
    flux = H.tiny_flux(seed=1)
    patched = H.load_lumix(pack, flux, "identity.safetensors")
    calls = H.counted_blocks(patched, monkeypatch)
    latent = H.maps_latent(pack, scenes=2, maps="color")
    ours, plain = sample(patched, latent, seed=5), sample(flux, latent, seed=5)
    diff = (ours - plain).abs().max().item()
    print(f"identity adapter (M=1, G3=0), 4 euler steps, cfg 2: max |patched - unpatched| = {diff:.3g}")
    assert {"double", "single"} == set(calls) and len(calls) == 2 * 4  # both blocks, every step (cond+uncond batched)
    assert torch.equal(ours, plain), diff  # QBA over one map computes exactly what the host's block does


def test_each_patched_block_is_lumix_core_on_the_same_block(pack, models):
    flux = H.tiny_flux(seed=2)
    patched = H.load_lumix(pack, flux, strength=0.8)
    adapter = load_adapter(models / "lumix.safetensors")  # lumix_core's own copy of the file
    dm = patched.model.diffusion_model
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(10, 16, H.HIDDEN, generator=g), torch.randn(10, 8, H.HIDDEN, generator=g)
    vec = torch.randn(10, H.HIDDEN, generator=g)
    ids = torch.cat((torch.zeros(10, 8, 3), image_ids(10, 8, 8)), dim=1)
    pe = dm.pe_embedder(ids)
    extra = {"transformer_options": {}} if ATTENTION_TAKES_OPTIONS else {}
    options = {} if ATTENTION_TAKES_OPTIONS else None

    def never(_):
        raise AssertionError("the patch must not call original_block")

    common = dict(group=5, query_index=2, strength=0.8, attention=comfy.ldm.flux.math.attention,
                  transformer_options=options)
    with torch.no_grad():
        args = {"img": img.clone(), "txt": txt.clone(), "vec": vec, "pe": pe, "attn_mask": None, **extra}
        out = H.dit_patches(patched)[("double_block", 0)](args, {"original_block": never})
        ref_img, ref_txt = double_block_forward(dm.double_blocks[0], img.clone(), txt.clone(), vec, pe,
                                                adapter=adapter.for_double(0), **common)
        assert torch.equal(out["img"], ref_img) and torch.equal(out["txt"], ref_txt)
        assert torch.equal(args["img"], img) and torch.equal(args["txt"], txt)  # inputs untouched
        x = torch.cat((txt, img), dim=1)
        out = H.dit_patches(patched)[("single_block", 0)](
            {"img": x.clone(), "vec": vec, "pe": pe, "attn_mask": None, **extra}, {"original_block": never})
        ref = single_block_forward(dm.single_blocks[0], x.clone(), vec, pe, adapter=adapter.for_single(0), **common)
        assert torch.equal(out["img"], ref)
        plain = dm.single_blocks[0](x.clone(), vec=vec, pe=pe)
        assert (plain - ref).abs().max() > 1e-3  # the adapter does change the block


def test_whole_model_call_matches_the_reference_flux(pack, models, tmp_path):
    from safetensors.torch import save_file

    flux = H.tiny_flux(seed=3)
    patched = H.load_lumix(pack, flux)
    dm = flux.model.diffusion_model
    save_file({k: v.contiguous() for k, v in dm.state_dict().items()}, str(tmp_path / "tiny_flux.safetensors"))
    ref = load_flux(tmp_path / "tiny_flux.safetensors")  # same weights, BFL names (either norm spelling)
    ref.attach(load_adapter(models / "lumix.safetensors"))
    g = torch.Generator().manual_seed(1)
    B = 10
    x = torch.randn(B, 16, 8, 8, generator=g)
    t = torch.rand(B, generator=g)
    ctx, y = torch.randn(B, 8, H.CONTEXT, generator=g), torch.randn(B, H.POOLED, generator=g)
    guidance = torch.full((B,), 3.5)
    with torch.no_grad():
        ours = dm(x, t, ctx, y=y, guidance=guidance,
                  transformer_options=copy.copy(patched.model_options["transformer_options"]))
        plain = dm(x, t, ctx, y=y, guidance=guidance)
        reference = unpack(ref(pack_tokens(x), image_ids(B, 8, 8), ctx, torch.zeros(B, 8, 3), t, y, guidance), 8, 8)
    diff = (ours - reference).abs().max().item()
    print(f"whole model call, ComfyUI + LumiX patches vs lumix_core.model.flux.Flux + adapter: max |diff| = {diff:.3g}")
    assert diff <= 1e-4
    assert (plain - reference).abs().max() > 1e-2


def _capture_noise(model):
    seen = {}

    def wrapper(executor, noise, latent_image, *args, **kwargs):
        seen["noise"] = noise.clone()
        return executor(noise, latent_image, *args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "test_capture", wrapper)
    return clone, seen


def _assert_scene_noise(noise, scenes=2, maps=5):
    groups = noise.reshape(scenes, maps, -1)
    assert (groups == groups[:, :1]).all(), "maps of a scene got different noise"
    assert not torch.equal(groups[0, 0], groups[1, 0]), "two scenes got the same noise"


def test_all_maps_of_a_scene_start_from_the_same_noise(pack, models):
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    patched = H.load_lumix(pack, H.tiny_flux())
    latent = H.maps_latent(pack, scenes=2)
    model, seen = _capture_noise(patched)
    with torch.no_grad():
        comfy_nodes.KSampler().sample(model, 11, 1, 1.0, "euler", "simple", POS, NEG, latent, 1.0)
    _assert_scene_noise(seen["noise"])
    _assert_scene_noise(Noise_RandomNoise(11).generate_noise(latent))  # what SamplerCustomAdvanced draws
    with torch.no_grad():
        pack["LumiXSampler"]().sample(model, 11, 1, 1.0, "euler", "lumix_release", POS, NEG, latent, 1.0)
    _assert_scene_noise(seen["noise"])


@pytest.mark.parametrize("cfg", [1.0, 2.5])
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_photo_mode_returns_the_photo_in_the_color_slot(pack, models, sampler, cfg):
    patched = H.load_lumix(pack, H.tiny_flux(seed=4))
    vae = H.tiny_vae()
    photos = torch.rand(2, 64, 72, 3, generator=torch.Generator().manual_seed(3))  # 72 px: cropped to 64
    with torch.no_grad():
        (latent,) = pack["LumiXPhotoToMapsLatent"]().encode(photos, vae, RELEASE.to_string())
        (out,) = pack["LumiXSampler"]().sample(patched, 7, 4, cfg, sampler, "lumix_release", POS, NEG, latent, 1.0)
    assert latent["samples"].shape == (10, 16, 8, 8) and latent["lumix_pin"] == "color"
    photo = latent["samples"][2::5]
    color = out["samples"][2::5]
    diff = (color - photo).abs().max().item()
    print(f"photo mode {sampler} cfg {cfg}: max |color slot - photo latent| = {diff:.3g}")
    assert torch.equal(color, photo), diff  # bit-exact: the pinned slot is written back after sampling
    others = out["samples"][[i for i in range(10) if i % 5 != 2]]
    assert others.isfinite().all() and others.abs().mean() > 0.1


def test_pin_photo_node_pins_for_stock_samplers_and_nothing_else_does(pack, models):
    patched = H.load_lumix(pack, H.tiny_flux(seed=4))
    with torch.no_grad():
        (latent,) = pack["LumiXPhotoToMapsLatent"]().encode(torch.rand(1, 64, 64, 3), H.tiny_vae(), RELEASE.to_string())
        (pinned,) = pack["LumiXPinPhoto"]().pin(patched, latent)
        (out,) = comfy_nodes.KSampler().sample(pinned, 3, 4, 1.0, "euler", "simple", POS, NEG, latent, 1.0)
        (unpinned,) = comfy_nodes.KSampler().sample(patched, 3, 4, 1.0, "euler", "simple", POS, NEG, latent, 1.0)
    photo = latent["samples"][2::5]
    assert torch.equal(out["samples"][2::5], photo)
    assert (unpinned["samples"][2::5] - photo).abs().max() > 0.1  # without the pin the photo is redrawn
    with pytest.raises(ValueError, match="has no pinned photo"):
        pack["LumiXPinPhoto"]().pin(patched, H.maps_latent(pack))


def test_two_scenes_in_one_latent_equal_two_separate_runs_with_cfg(pack, models):
    patched = H.load_lumix(pack, H.tiny_flux(seed=5))
    calls = []

    def spy(executor, x, t, *args, **kwargs):
        calls.append((x.shape[0], list(args[3].get("cond_or_uncond", []))))
        return executor(x, t, *args, **kwargs)

    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_spy", spy)
    latent = H.maps_latent(pack, scenes=2)
    noise = comfy.sample.prepare_noise(latent["samples"], 9, latent["batch_index"])
    joint = sample(patched, latent, noise=noise, cfg=3.0)
    assert calls[0] == (20, [1, 0]) or calls[0] == (20, [0, 1])  # cond and uncond stacked in one call
    one = {"samples": latent["samples"][:5]}
    first = sample(patched, one, noise=noise[:5], cfg=3.0)
    second = sample(patched, one, noise=noise[5:], cfg=3.0)
    diff = max((joint[:5] - first).abs().max().item(), (joint[5:] - second).abs().max().item())
    print(f"two scenes jointly vs separately, cfg 3: max |diff| = {diff:.3g}")
    assert diff <= 1e-5
    assert (joint[:5] - joint[5:]).abs().max() > 0.1


def test_strength_zero_keeps_the_color_map_of_the_plain_model(pack, models):
    flux = H.tiny_flux(seed=6)
    latent = H.maps_latent(pack, scenes=1)
    # different noise per map, so that sharing the color map's queries visibly changes the others
    noise = comfy.sample.prepare_noise(latent["samples"], 4, None)
    zero, plain, full = (sample(m, latent, noise=noise)
                         for m in (H.load_lumix(pack, flux, strength=0.0), flux, H.load_lumix(pack, flux)))
    assert (zero[2] - plain[2]).abs().max() <= 1e-5
    assert (zero[0] - plain[0]).abs().max() > 1e-3  # the other maps take the color map's queries
    assert (full[2] - plain[2]).abs().max() > 1e-3


def test_ten_clones_share_one_adapter_in_memory(pack, models):
    cache = host_module(pack, "_host").ADAPTERS
    cache.clear()
    loads = cache.loads
    flux = H.tiny_flux()
    patched = H.load_lumix(pack, flux)
    clones = [patched.clone() for _ in range(10)]  # what downstream nodes do (deep-copies model_options)
    reloads = [H.load_lumix(pack, flux) for _ in range(10)]  # the loader run again, e.g. in ten branches
    assert cache.loads == loads + 1  # the file was read once

    def measure(models_):
        tensors, objects = {}, set()
        for m in models_:
            for p in H.dit_patches(m).values():
                objects.add(id(p))
                for t in p.lora.parameters():
                    tensors[t.data_ptr()] = t.nbytes
        return objects, tensors

    one = sum(t.nbytes for t in load_adapter(models / "lumix.safetensors").parameters())
    for what, models_, n_objects in (("clones", clones, 2), ("loads", reloads, 20)):
        objects, tensors = measure(models_)
        print(f"10 {what}: {len(objects)} patch objects, {len(tensors)} unique adapter tensors (by data_ptr), "
              f"{sum(tensors.values())} bytes; one adapter = {one} bytes; a copy per model would be {10 * one} bytes")
        assert sum(tensors.values()) == one and len(objects) == n_objects
    adapter = H.dit_patches(clones[0])[("double_block", 0)].lora
    clones[0].model_patches_to(torch.float16)  # what ComfyUI does with the model dtype at load time
    clones[0].model_patches_to(comfy.model_management.get_torch_device())
    assert all(t.dtype == torch.float32 for t in adapter.parameters())


def test_an_fp8_adapter_keeps_its_dtype_and_runs(pack, models):
    adapter = H.random_adapter(seed=8).to(torch.float8_e4m3fn)
    from lumix_core.model.checkpoint import save_adapter

    save_adapter(adapter, models / "lumix_fp8.safetensors", overwrite=True)
    patched = H.load_lumix(pack, H.tiny_flux(), "lumix_fp8.safetensors")
    out = sample(patched, H.maps_latent(pack), steps=2)
    assert out.isfinite().all()
    lora = H.dit_patches(patched)[("single_block", 0)].lora
    assert all(p.dtype == torch.float8_e4m3fn for p in lora.parameters())


def test_sampler_reports_progress_and_stops_when_interrupted(pack, models):
    patched = H.load_lumix(pack, H.tiny_flux())
    latent = H.maps_latent(pack)
    seen = []

    def hook(value, total, *args, **kwargs):  # ComfyUI's server hook also checks for interruption
        seen.append((value, total))
        comfy.model_management.throw_exception_if_processing_interrupted()

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with torch.no_grad():
            pack["LumiXSampler"]().sample(patched, 1, 3, 1.0, "euler", "lumix_release", POS, NEG, latent, 1.0)
        assert seen and seen[-1] == (3, 3)
        comfy.model_management.interrupt_current_processing(True)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            with torch.no_grad():
                pack["LumiXSampler"]().sample(patched, 1, 3, 1.0, "euler", "simple", POS, NEG, latent, 1.0)
        comfy.model_management.interrupt_current_processing(True)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            pack["LumiXDecodeMaps"]().decode(latent, H.tiny_vae(), "opengl", False)
    finally:
        comfy.model_management.interrupt_current_processing(False)
        comfy.utils.set_progress_bar_global_hook(None)


def test_decode_maps_gives_five_conventional_maps_per_scene(pack, models):
    patched = H.load_lumix(pack, H.tiny_flux())
    with torch.no_grad():
        (out,) = pack["LumiXSampler"]().sample(patched, 2, 2, 1.0, "euler", "lumix_release", POS, NEG,
                                               H.maps_latent(pack, scenes=2), 1.0)
        albedo, irradiance, color, depth, normal, mask = pack["LumiXDecodeMaps"]().decode(out, H.tiny_vae(),
                                                                                          "directx", False)
    assert all(m.shape == (2, 64, 64, 3) for m in (albedo, irradiance, color, depth, normal))
    assert mask.shape == (2, 64, 64) and torch.equal(depth[..., 0], mask)
    torch.testing.assert_close((normal * 2 - 1).norm(dim=-1), torch.ones(2, 64, 64), atol=1e-5, rtol=0)
    assert mask.amax(dim=(1, 2)).tolist() == [1.0, 1.0] and mask.amin(dim=(1, 2)).tolist() == [0.0, 0.0]


def test_replacing_other_block_patches_is_reported(pack, models, caplog):
    other = H.tiny_flux().clone()
    other.set_model_patch_replace(lambda args, extra: extra["original_block"](args), "dit", "double_block", 0)
    with caplog.at_level(logging.WARNING, logger="comfyui-lumix"):
        patched = H.load_lumix(pack, other)
    assert "replacing other block patches on [('double_block', 0)]" in caplog.text
    assert type(H.dit_patches(patched)[("double_block", 0)]).__name__ == "LumiXBlockPatch"


# ----------------------------------------------------------------------------- refusals
def test_a_non_flux_model_is_refused(pack, models):
    with pytest.raises(ValueError, match=r"LumiX works on FLUX.1 only, but the connected MODEL is SD15.*UNETLoader"):
        H.load_lumix(pack, H.tiny_sd15())


def test_a_mismatched_adapter_names_file_block_and_shapes(pack, models):
    H.write_adapter(models / "wide.safetensors", hidden=32)
    with pytest.raises(ValueError, match=r"wide.safetensors: adapter hidden size is 32 but the model's is 64: "
                                              r"'double_blocks.0.processor.kv_tt_lora.G2' has shape \[5, 32, 4, 4\], "
                                              r"expected \[5, 64, 4, 4\]"):
        H.load_lumix(pack, H.tiny_flux(), "wide.safetensors")
    H.write_adapter(models / "deep.safetensors", doubles=3)
    with pytest.raises(ValueError, match=r"deep.safetensors: adapter has 'double_blocks.1' but the model has only "
                                              r"1 double_blocks"):
        H.load_lumix(pack, H.tiny_flux(), "deep.safetensors")


def test_an_adapter_that_is_a_pickle_is_refused(pack, models):
    torch.save({"double_blocks.0.processor.kv_tt_lora.G1": torch.zeros(5, 5, 4)}, models / "evil.safetensors")
    with pytest.raises(ValueError, match=r"evil.safetensors: this file is a pickle.*only reads .safetensors"):
        H.load_lumix(pack, H.tiny_flux(), "evil.safetensors")


def test_a_batch_that_is_not_whole_scenes_is_refused_by_any_sampler(pack, models):
    patched = H.load_lumix(pack, H.tiny_flux())
    (plain_latent,) = comfy_nodes.EmptyLatentImage().generate(64, 64, 3)
    with pytest.raises(ValueError, match=r"LATENT batch of 3 is not a multiple of the map count 5.*"
                                         r"LumiX Empty Maps Latent"):
        comfy_nodes.KSampler().sample(patched, 0, 1, 1.0, "euler", "simple", POS, NEG, plain_latent, 1.0)
    bad = dict(H.maps_latent(pack), samples=torch.zeros(7, 16, 8, 8))
    with pytest.raises(ValueError, match="LATENT batch of 7 is not a multiple of the map count 5"):
        pack["LumiXSampler"]().sample(patched, 0, 1, 1.0, "euler", "simple", POS, NEG, bad, 1.0)


def test_a_size_that_is_not_a_multiple_of_16_is_refused(pack):
    with pytest.raises(ValueError, match=r"width 72 not a multiple of 16 pixels.*Use e\.g\. 64x64"):
        pack["LumiXEmptyMapsLatent"]().make(72, 64, 1, RELEASE.to_string())


def test_latent_maps_must_match_the_adapter_and_context_windows_are_refused(pack, models):
    patched = H.load_lumix(pack, H.tiny_flux())
    with pytest.raises(ValueError, match=r"holds maps albedo,color \(M=2\) but the adapter lumix.safetensors was "
                                         r"trained for"):
        pack["LumiXSampler"]().sample(patched, 0, 1, 1.0, "euler", "simple", POS, NEG,
                                      H.maps_latent(pack, maps="albedo,color"), 1.0)

    class BatchWindows:  # a context-window handler over dim 0, as comfy.context_windows defines them
        dim = 0

        def should_use_context(self, *args):
            return True

    windowed = patched.clone()
    windowed.model_options["context_handler"] = BatchWindows()
    with pytest.raises(ValueError, match="context-window handler .*slices the batch dimension"):
        comfy_nodes.KSampler().sample(windowed, 0, 1, 1.0, "euler", "simple", POS, NEG, H.maps_latent(pack), 1.0)

"""Bad inputs a new user feeds the LumiX nodes inside a real ComfyUI (COMFYUI_PATH), and what they see.

Each test feeds one bad input through ComfyUI's own nodes and samplers and checks that the
message names the problem and the fix, and that nothing was written or silently produced.
Refusals are matched as ``ValueError`` / ``OSError``: the pack ComfyUI loaded has its own
copy of lumix_core, so its exception classes are not this process's.
"""
import json
import math
import os

import lumix_host as H  # skips the module without COMFYUI_PATH
import pytest
import torch
from safetensors.torch import save_file

# isort: split
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import folder_paths  # noqa: E402

import nodes as comfy_nodes  # noqa: E402  (ComfyUI's nodes.py)
from lumix_core.maps import RELEASE, MapSet  # noqa: E402

POS, NEG = H.conditioning(1), H.conditioning(2)
FOUR = MapSet.parse("albedo,color,depth,normal")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = H.models_folder(tmp_path_factory, "models_lumix_refusals")
    H.write_adapter(folder / "four.safetensors", maps=FOUR, seed=1)
    return folder


@pytest.fixture
def output_dir(tmp_path):
    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_output_directory(old)


def ksampler(model, latent, steps=1):
    with torch.no_grad():
        return comfy_nodes.KSampler().sample(model, 0, steps, 1.0, "euler", "simple", POS, NEG, latent, 1.0)[0]


def custom_advanced(model, latent):
    """What SamplerCustomAdvanced does with its inputs: a guider samples the latent's tensor."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(POS, NEG)
    guider.set_cfg(1.0)
    noise = comfy.sample.prepare_noise(latent["samples"], 0, latent.get("batch_index"))
    sigmas = torch.tensor([1.0, 0.0])
    with torch.no_grad():
        return guider.sample(noise, latent["samples"], comfy.samplers.sampler_object("euler"), sigmas)


def lumix_sampler(pack, model, latent):
    with torch.no_grad():
        return pack["LumiXSampler"]().sample(model, 0, 1, 1.0, "euler", "simple", POS, NEG, latent, 1.0)[0]


def message(call):
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


# ----------------------------------------------------------------------------- map set checked by every sampler
@pytest.mark.parametrize("adapter, maps, scenes", [
    ("four.safetensors", RELEASE.to_string(), 4),  # 4 scenes x 5 maps = 20 = 5 groups of 4: only the map set tells
    ("lumix.safetensors", "color,albedo,irradiance,depth,normal", 1),  # the adapter's maps in another order
])
def test_every_sampler_refuses_a_latent_of_another_map_set_with_lumix_samplers_message(pack, models, adapter, maps,
                                                                                      scenes):
    model = H.load_lumix(pack, H.tiny_flux(), adapter)
    latent = H.maps_latent(pack, scenes, maps)
    ours = message(lambda: lumix_sampler(pack, model, latent))
    ms = MapSet.parse(maps)
    wanted = "albedo,color,depth,normal" if adapter == "four.safetensors" else RELEASE.to_string()
    assert ours == (f"the latent holds maps {ms.to_string()} (M={ms.size}) but the adapter {adapter} was trained for "
                    f"{wanted} (M={len(wanted.split(','))}); set the latent node's 'maps' to '{wanted}'")
    assert message(lambda: ksampler(model, latent)) == ours
    assert message(lambda: custom_advanced(model, latent)) == ours
    # LumiX Sampler's output carries the map set on, and a second stock pass over it is accepted
    sampled = lumix_sampler(pack, model, H.maps_latent(pack, 1, wanted))
    assert ksampler(model, sampled)["samples"].isfinite().all()
    print(f"LumiX Sampler, KSampler and SamplerCustomAdvanced all say: {ours}")


def test_matching_latents_still_sample_with_stock_samplers(pack, models):
    model = H.load_lumix(pack, H.tiny_flux(), "four.safetensors")
    out = ksampler(model, H.maps_latent(pack, 2, FOUR.to_string()))
    assert out["samples"].shape == (8, 16, 8, 8) and out["samples"].isfinite().all()
    assert custom_advanced(model, H.maps_latent(pack, 1, FOUR.to_string())).shape == (4, 16, 8, 8)


# ----------------------------------------------------------------------------- adapter twice, no adapter
def test_a_second_adapter_on_a_patched_model_is_refused_naming_both_files(pack, models):
    once = H.load_lumix(pack, H.tiny_flux())
    text = message(lambda: H.load_lumix(pack, once, "four.safetensors"))
    assert text == ("this MODEL already has the LumiX adapter lumix.safetensors; LumiX runs one adapter at a time, so "
                    "four.safetensors is not loaded over it. Connect the FLUX model itself (UNETLoader) to this LumiX "
                    "Load Adapter, or remove one of the two LumiX Load Adapter nodes")
    print(text)


def test_lumix_sampler_refuses_a_flux_model_without_an_adapter(pack, models):
    text = message(lambda: lumix_sampler(pack, H.tiny_flux(), H.maps_latent(pack)))
    assert (text.startswith("LumiX Sampler: the MODEL (Flux")
            and "has no LumiX adapter, so it would sample 5 unrelated plain images" in text
            and text.endswith("connect the model through LumiX Load Adapter (FLUX model -> LumiX Load Adapter -> "
                              "LumiX Sampler)"))
    print(text)


# ----------------------------------------------------------------------------- photos and NaN
@pytest.mark.parametrize("channels", [1, 2])
def test_grey_photos_are_decomposed_as_rgb(pack, models, channels):
    vae = H.tiny_vae()
    grey = torch.rand(1, 64, 64, 1, generator=torch.Generator().manual_seed(4))
    photo = grey if channels == 1 else torch.cat((grey, torch.ones_like(grey)), dim=-1)
    with torch.no_grad():
        (latent,) = pack["LumiXPhotoToMapsLatent"]().encode(photo, vae, RELEASE.to_string())
        (rgb,) = pack["LumiXPhotoToMapsLatent"]().encode(grey.repeat(1, 1, 1, 3), vae, RELEASE.to_string())
        out = lumix_sampler(pack, H.load_lumix(pack, H.tiny_flux()), latent)
    assert torch.equal(latent["samples"], rgb["samples"])
    assert (out["samples"][2] - latent["samples"][2]).abs().max() <= 1e-5 and out["samples"].isfinite().all()


def test_non_finite_values_are_refused_where_they_enter(pack, models, output_dir):
    photo = torch.rand(2, 64, 64, 3)
    photo[1, 10, 10] = float("nan")
    text = message(lambda: pack["LumiXPhotoToMapsLatent"]().encode(photo, H.tiny_vae(), RELEASE.to_string()))
    assert text.startswith("the photo holds 3 NaN/inf value(s) of 24576 (first in image 1); the node that made this "
                           "IMAGE produced invalid pixels; fix or replace it")
    print(text)
    model = H.load_lumix(pack, H.tiny_flux())
    latent = H.maps_latent(pack)
    latent["samples"][3, 0, 0, 0] = float("inf")
    for call in (lambda: ksampler(model, latent), lambda: lumix_sampler(pack, model, latent)):
        text = message(call)
        assert text.startswith("the LATENT to sample holds 1 NaN/inf value(s) of 5120 (first in map depth of scene 0); "
                               "the node that made it produced invalid values; make it again with LumiX Empty Maps "
                               "Latent")
    print(text)
    text = message(lambda: pack["LumiXDecodeMaps"]().decode(latent, H.tiny_vae(), "opengl", False))
    assert text.startswith("the LATENT to decode holds 1 NaN/inf value(s) of 5120 (first in map depth of scene 0); "
                           "sampling diverged; check the adapter file of LumiX Load Adapter")
    maps = {name: torch.rand(1, 64, 64, 3) for name in RELEASE.names}
    maps["normal"][0, 1, 1, 1] = float("nan")
    text = message(lambda: save(pack, maps))
    assert text.startswith("the normal map holds 1 NaN/inf value(s) of 12288 (first in scene 0)")
    assert "Nothing was saved" in text and list(output_dir.iterdir()) == []


# ----------------------------------------------------------------------------- damaged adapter files
def _damaged(models, name, edit=None, metadata=None):
    state = {k: v.contiguous() for k, v in H.random_adapter(seed=3).state_dict().items()}
    if edit:
        edit(state)
    meta = {"lumix.format": "1", "lumix.modalities": RELEASE.to_string(), "lumix.rank": "4", "lumix.alpha": "none"}
    meta.update(metadata or {})
    save_file(state, str(models / name), metadata=meta)
    return name


@pytest.mark.parametrize("case, wanted", [
    ("nan", "nan.safetensors: 'double_blocks.0.processor.kv_tt_lora.G2' holds 1 NaN/inf value(s) of"),
    ("huge", "huge.safetensors: 'double_blocks.0.processor.kv_tt_lora.G2' has values up to 1e+30, far beyond"),
    ("alpha", "alpha.safetensors: metadata 'lumix.alpha' is 'nan', expected a positive finite number or 'none'"),
    ("banana", "banana.safetensors: metadata 'lumix.alpha' is 'banana', expected a positive number or 'none'"),
    ("rank", "rank.safetensors: metadata 'lumix.rank' is 'eight', expected an integer (the rank, e.g. 8)"),
    ("dupes", "dupes.safetensors: metadata 'lumix.modalities' is 'albedo,color,color,depth,normal', expected"),
    ("int32", "int32.safetensors: 'double_blocks.0.processor.kv_tt_lora.G1' is stored as I32, but Tensor LoRA "
              "factors are floating point"),
    ("objective", "objective.safetensors: metadata 'lumix.objective' is 'distilled', expected flow-matching or "
                  "one-step"),
])
def test_a_damaged_adapter_names_the_file_and_the_problem(pack, models, case, wanted):
    key = "double_blocks.0.processor.kv_tt_lora."
    edits = {"nan": lambda s: s[key + "G2"].view(-1).__setitem__(7, math.nan),
             "huge": lambda s: s[key + "G2"].view(-1).__setitem__(7, 1e30),
             "int32": lambda s: s.__setitem__(key + "G1", s[key + "G1"].to(torch.int32))}
    metas = {"alpha": {"lumix.alpha": "nan"}, "banana": {"lumix.alpha": "banana"}, "rank": {"lumix.rank": "eight"},
             "dupes": {"lumix.modalities": "albedo,color,color,depth,normal"},
             "objective": {"lumix.objective": "distilled"}}
    name = _damaged(models, f"{case}.safetensors", edits.get(case), metas.get(case))
    text = message(lambda: H.load_lumix(pack, H.tiny_flux(), name))
    assert text.startswith(wanted), text
    print(text)


def test_a_missing_adapter_file_says_where_it_goes(pack, models):
    cls = pack["LumiXLoadAdapter"]
    assert cls.VALIDATE_INPUTS("lumix.safetensors") is True
    text = cls.VALIDATE_INPUTS("missing.safetensors")
    assert text.startswith("adapter file 'missing.safetensors' is in neither ComfyUI/models/lumix nor models/loras: "
                           "put the LumiX adapter (e.g. lumix.safetensors) into ComfyUI/models/lumix")
    assert "ComfyUI/models/lumix" in cls.INPUT_TYPES()["required"]["adapter"][1]["tooltip"]
    assert os.path.isdir(os.path.join(folder_paths.models_dir, "lumix"))  # created when the pack loads


# ----------------------------------------------------------------------------- slices, foreign latents, adapter list
CUT = "is not whole LumiX scenes: its noise indices [0, 0, 1, 1, 1] put maps of different scenes into one group of 5"


def test_a_slice_across_scenes_is_refused_by_every_sampler_and_by_decode(pack, models):
    """Latent From Batch taking items 3-7 of a 2-scene LumiX latent: maps 3-4 of scene 0 and 0-2 of scene 1."""
    model = H.load_lumix(pack, H.tiny_flux())
    latent = H.maps_latent(pack, scenes=2)
    sliced = comfy_nodes.LatentFromBatch().frombatch(latent, 3, 5)[0]
    assert sliced["batch_index"] == [0, 0, 1, 1, 1]
    for run in (lambda: ksampler(model, sliced), lambda: custom_advanced(model, sliced),
                lambda: lumix_sampler(pack, model, sliced)):
        text = message(run)
        assert CUT in text and "Slice by whole scenes: batch_index = k x 5 and length = n x 5" in text, text
    print(text)
    sampled = ksampler(model, latent)
    cut = comfy_nodes.LatentFromBatch().frombatch(sampled, 3, 5)[0]
    text = message(lambda: pack["LumiXDecodeMaps"]().decode(cut, H.tiny_vae(), "opengl", False))
    assert text.startswith("LumiX Decode Maps: the LATENT batch " + CUT), text
    whole = comfy_nodes.LatentFromBatch().frombatch(latent, 5, 5)[0]  # scene 1, whole: samples and decodes
    with torch.inference_mode():
        maps = pack["LumiXDecodeMaps"]().decode(ksampler(model, whole), H.tiny_vae(), "opengl", False)
    assert maps[0].shape[0] == 1


def test_samplers_say_an_encoded_sd_latent_is_not_a_flux_latent(pack, models):
    """Not all zeros (VAE Encode with an SD VAE): ComfyUI does not widen it to 16 channels as it does an empty one."""
    model = H.load_lumix(pack, H.tiny_flux())
    sd_latent = {"samples": torch.randn(5, 4, 8, 8)}
    text = message(lambda: ksampler(model, sd_latent))
    assert text.startswith("the LATENT to sample is not a FLUX latent: it has shape (5, 4, 8, 8), an SD 1.5 / SDXL "
                           "latent"), text
    text = message(lambda: lumix_sampler(pack, model, sd_latent))
    assert text.startswith("LumiX Sampler: the LATENT is not a FLUX latent"), text
    ksampler(model, dict(H.maps_latent(pack), samples=torch.zeros(5, 4, 8, 8)))  # an empty one is widened and samples


def test_decode_maps_says_a_stock_latent_is_not_a_flux_latent(pack):
    sd_latent = comfy_nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    text = message(lambda: pack["LumiXDecodeMaps"]().decode(sd_latent, H.tiny_vae(), "opengl", False))
    assert text.startswith("LumiX Decode Maps: the LATENT is not a FLUX latent: it has shape (1, 4, 8, 8), an SD 1.5 "
                           "/ SDXL latent, as Empty Latent Image or VAE Encode with an SD VAE make it; a FLUX latent "
                           "has 16 channels. Make it with LumiX Empty Maps Latent or LumiX Photo To Maps Latent"), text
    print(text)
    sd_vae = H.tiny_vae()
    sd_vae.latent_channels = 4  # what comfy.sd.VAE reports for an SD 1.5 / SDXL VAE
    text = message(lambda: pack["LumiXDecodeMaps"]().decode(H.maps_latent(pack), sd_vae, "opengl", False))
    assert text == ("LumiX Decode Maps: the VAE decodes 4-channel latents, so it is not the FLUX VAE; load "
                    "ae.safetensors with Load VAE and connect it"), text


def test_broken_links_and_folders_are_not_offered_as_adapters_and_say_what_they_are(pack, models):
    cls = pack["LumiXLoadAdapter"]
    broken, folder = models / "broken.safetensors", models / "folder.safetensors"
    broken.symlink_to(models / "gone.safetensors")
    folder.mkdir()
    try:
        offered = cls.INPUT_TYPES()["required"]["adapter"][0]
        assert "lumix.safetensors" in offered
        assert "broken.safetensors" not in offered and "folder.safetensors" not in offered
        text = cls.VALIDATE_INPUTS("broken.safetensors")
        gone = models / "gone.safetensors"
        assert text.startswith(f"adapter 'broken.safetensors' cannot be read: {broken}: a broken link (its target "
                               f"{gone} does not exist); put the adapter file itself there"), text
        print(text)
        text = cls.VALIDATE_INPUTS("folder.safetensors")
        assert text.startswith(f"adapter 'folder.safetensors' cannot be read: {folder}: a folder, not an adapter "
                               "file"), text
        with pytest.raises(OSError, match="a broken link"):
            H.load_lumix(pack, H.tiny_flux(), "broken.safetensors")
    finally:
        broken.unlink()
        folder.rmdir()


# ----------------------------------------------------------------------------- Save Maps
def save(pack, maps, prefix="LumiX/maps", prompt_text="", report_json=None, prompt=None, extra_pnginfo=None):
    return pack["LumiXSaveMaps"]().save(prefix, True, True, False, "opengl", False, prompt_text=prompt_text, seed=5,
                                        report_json=report_json, prompt=prompt, extra_pnginfo=extra_pnginfo, **maps)


def test_save_maps_refuses_unstorable_prefixes_before_writing_anything(pack, output_dir):
    maps = {name: torch.rand(1, 16, 16, 3) for name in RELEASE.names}
    text = message(lambda: save(pack, maps, prefix="LumiX/ma\x00ps"))
    assert "contains a NUL character, which no file name can hold; remove it" in text
    text = message(lambda: save(pack, maps, prefix="LumiX/" + "x" * 250))
    assert text.startswith("filename_prefix is too long: the name 'xxxx") and "Nothing was written." in text
    print(text)
    assert list(output_dir.iterdir()) == []


def test_save_maps_escapes_metadata_png_cannot_hold_and_saves_the_report(pack, output_dir):
    from PIL import Image

    maps = {name: torch.rand(1, 16, 16, 3) for name in RELEASE.names}
    report = json.dumps({"scenes": [{"recompose_error": 0.25}]})
    ui = save(pack, maps, prompt_text="a \ud83d lamp", report_json=report, prompt={"1": {"class_type": "X"}},
              extra_pnginfo={"workflow 🎨": {"nodes": []}})
    shown = ui["ui"]["images"]
    assert len(shown) == 5
    with Image.open(output_dir / "LumiX" / shown[0]["filename"]) as im:
        im.load()
        text = dict(im.text)
    assert text["lumix.prompt"] == "a \\ud83d lamp" and text["workflow _"] == '{"nodes": []}'
    assert json.loads(text["prompt"]) == {"1": {"class_type": "X"}}
    assert json.loads((output_dir / "LumiX" / "maps_00001_report.json").read_text()) == json.loads(report)
    assert len(list((output_dir / "LumiX").iterdir())) == 5 + 2 + 1  # png8 x5, png16 x2, the report


def test_concurrent_saves_into_one_prefix_each_write_a_whole_set(pack, output_dir):
    """Three Save Maps at once into the same prefix (ComfyUI runs nodes of separate queues in threads, and
    several ComfyUI instances may share an output folder): every set is written whole, under its own counter."""
    import threading

    maps = {name: torch.rand(2, 16, 16, 3) for name in RELEASE.names}
    start, results, errors = threading.Barrier(3), [], []

    def one_save():
        start.wait()
        try:
            results.append(save(pack, maps))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one_save) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    counters = sorted({f["filename"].split("_")[1] for r in results for f in r["ui"]["images"]})
    assert counters == ["00001", "00002", "00003"]
    files = sorted(p.name for p in (output_dir / "LumiX").iterdir())
    assert len(files) == 3 * 2 * (5 + 2) and not [f for f in files if f.startswith(".")]  # no temp file left

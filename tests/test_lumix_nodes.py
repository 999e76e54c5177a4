"""The LumiX ComfyUI nodes without ComfyUI: package import, definitions, patch protocol, workflows."""
import copy
import json
import logging
import subprocess
import sys
import textwrap

import pytest
import torch
import workflow_tools as wt
from helpers import block_adapter, block_inputs, blocks
from pack_import import ROOT, pack_module

from lumix_core.maps import RELEASE, MapSet
from lumix_core.model.flux_math import attention as lumix_attention
from lumix_core.model.qba import double_block_forward, single_block_forward

MODULES = ("nodes.lumix_model", "nodes.lumix_latents", "nodes.lumix_sampler", "nodes.lumix_maps", "nodes.lumix_shot")
LUMIX_NODES = {
    "LumiXLoadAdapter", "LumiXPinPhoto", "LumiXEmptyMapsLatent", "LumiXPhotoToMapsLatent", "LumiXSampler",
    "LumiXReleaseSchedule", "LumiXOneStepSchedule", "LumiXDecodeMaps", "LumiXSplitMaps", "LumiXDecomposeShot",
    "LumiXSaveSequence",
}
WORKFLOWS = ("text_to_intrinsics", "photo_to_intrinsics", "photo_to_intrinsics_fast", "relight", "shot_to_intrinsics")
#: ComfyUI's own nodes used by the workflows (checked against the host in tests/host).
CORE_NODES = frozenset({"UNETLoader", "DualCLIPLoader", "VAELoader", "CLIPTextEncode", "FluxGuidance", "SaveImage",
                        "PreviewImage", "LoadImage", "ImageScale", "PreviewAny", "DisableNoise", "BasicGuider",
                        "KSamplerSelect", "SamplerCustomAdvanced", "LoadVideo", "GetVideoComponents"})

patches = pack_module("nodes._patches")
RELEASE_NEGATIVE_PROMPT = "blurry, low quality, artifacts, distorted, noisy, pixelated, jpeg artifacts"


def all_classes():
    classes = {}
    for name in MODULES + ("nodes.compositing",):
        classes.update(pack_module(name).NODE_CLASS_MAPPINGS)
    return classes


def test_the_pack_imports_as_a_package_without_comfyui():
    """What ComfyUI does with the folder (spec_from_file_location on __init__.py), in a clean process."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("comfyui_lumix_pack", {str(ROOT / '__init__.py')!r},
                                                      submodule_search_locations=[{str(ROOT)!r}])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["comfyui_lumix_pack"] = pack
        spec.loader.exec_module(pack)
        assert not any(m == "comfy" or m.startswith("comfy.") or m == "folder_paths" for m in sys.modules)
        assert "nodes" not in sys.modules  # ComfyUI's name stays free
        print(sorted(pack.NODE_CLASS_MAPPINGS))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    registered = set(eval(out.stdout.strip().splitlines()[-1]))
    assert LUMIX_NODES <= registered and len(registered) == len(LUMIX_NODES) + 4  # + the compositing nodes


def test_node_definitions_are_complete():
    for module in MODULES:
        mod = pack_module(module)
        assert set(mod.NODE_CLASS_MAPPINGS) == set(mod.NODE_DISPLAY_NAME_MAPPINGS)
        for key, cls in mod.NODE_CLASS_MAPPINGS.items():
            assert mod.NODE_DISPLAY_NAME_MAPPINGS[key].startswith("LumiX ")
            assert cls.CATEGORY.startswith("LumiX/") and len(cls.DESCRIPTION) > 80
            assert callable(getattr(cls, cls.FUNCTION))
            assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
            for section, inputs in cls.INPUT_TYPES().items():
                for name, (kind, *opts) in inputs.items():
                    assert opts and opts[0].get("tooltip"), f"{key}.{name} has no tooltip"
    assert set().union(*(pack_module(m).NODE_CLASS_MAPPINGS for m in MODULES)) == LUMIX_NODES


def test_sampler_offers_the_release_schedule_first():
    sampler = pack_module("nodes.lumix_sampler")
    spec = sampler.LumiXSampler.INPUT_TYPES()["required"]
    assert spec["scheduler"][0][0] == "lumix_release" == spec["scheduler"][1]["default"]
    (sigmas,) = sampler.LumiXReleaseSchedule().sigmas(512, 512, 50, 1.0)
    assert sigmas.shape == (51,) and sigmas[0] == 1 and sigmas[-1] == 0


def test_the_one_step_schedule_is_sigmas_one_zero_as_a_node_and_a_scheduler():
    from lumix_core.sampling.sampler import ONE_STEP_TIMESTEPS

    sampler = pack_module("nodes.lumix_sampler")
    spec = sampler.LumiXSampler.INPUT_TYPES()["required"]
    assert spec["scheduler"][0][1] == "lumix_one_step" and "lumix_one_step" in spec["scheduler"][1]["tooltip"]
    node = sampler.LumiXOneStepSchedule
    assert node.CATEGORY == "LumiX/Sampling" and node.INPUT_TYPES() == {"required": {}}
    assert "DisableNoise" in node.DESCRIPTION and "photo_to_intrinsics_fast.json" in node.DESCRIPTION
    (sigmas,) = node().sigmas()
    assert sigmas.dtype == torch.float32 and sigmas.tolist() == list(ONE_STEP_TIMESTEPS) == [1.0, 0.0]
    assert sampler.NODE_DISPLAY_NAME_MAPPINGS["LumiXOneStepSchedule"] == "LumiX One-Step Schedule"
    assert "one-step" in pack_module("nodes.lumix_model").LumiXLoadAdapter.DESCRIPTION


def test_empty_maps_latent_node():
    latents = pack_module("nodes.lumix_latents")
    (lat,) = latents.LumiXEmptyMapsLatent().make(64, 32, 2, "albedo,irradiance,color,depth,normal")
    assert lat["samples"].shape == (10, 16, 4, 8) and lat["samples"].abs().sum() == 0
    assert lat["batch_index"] == [0] * 5 + [1] * 5 and lat["lumix_maps"] == RELEASE.to_string()
    assert "lumix_pin" not in lat
    with pytest.raises(ValueError, match="height 40 not a multiple of 16"):
        latents.LumiXEmptyMapsLatent().make(64, 40, 1, "albedo,color")


def test_split_maps_node_applies_the_conventions():
    maps_nodes = pack_module("nodes.lumix_maps")
    images = torch.rand(10, 8, 8, 3)
    albedo, irradiance, color, depth, normal, mask = maps_nodes.LumiXSplitMaps().split(images, RELEASE.to_string(),
                                                                                       "opengl", False)
    assert torch.equal(albedo, images[0::5]) and torch.equal(color, images[2::5])
    n = normal * 2 - 1
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(2, 8, 8))
    assert mask.shape == (2, 8, 8) and torch.equal(depth[..., 0], mask)
    flat = images[3::5].mean(-1).reshape(2, -1)
    assert torch.equal(mask.reshape(2, -1).argmax(1), flat.argmax(1))  # near = bright kept
    *_, inverted = maps_nodes.LumiXSplitMaps().split(images, RELEASE.to_string(), "opengl", True)
    torch.testing.assert_close(inverted, 1 - mask)
    with pytest.raises(ValueError, match="image batch of 9 is not a multiple of the map count 5"):
        maps_nodes.LumiXSplitMaps().split(images[:9], RELEASE.to_string(), "opengl", False)


# ----------------------------------------------------------------------------- patch protocol
def _never(_args):
    raise AssertionError("original_block must not be called")


def test_block_patch_is_the_qba_function_and_leaves_inputs_alone():
    double, single = blocks()
    adapter = block_adapter()
    img, txt, vec, pe = block_inputs(10)
    ref_img, ref_txt = double_block_forward(double, img.clone(), txt.clone(), vec, pe, group=5, query_index=2,
                                            adapter=adapter.for_double(0), strength=0.7)
    patch = patches.LumiXBlockPatch("double", 0, double, adapter.for_double(0), RELEASE, 0.7, lumix_attention)
    args = {"img": img, "txt": txt, "vec": vec, "pe": pe, "attn_mask": None}
    keep = {k: v.clone() for k, v in args.items() if v is not None}
    out = patch(args, {"original_block": _never})
    assert torch.equal(out["img"], ref_img) and torch.equal(out["txt"], ref_txt)
    assert all(torch.equal(args[k], v) for k, v in keep.items())
    x = torch.cat((txt, img), dim=1)
    ref_x = single_block_forward(single, x.clone(), vec, pe, group=5, query_index=2, adapter=adapter.for_single(0),
                                 strength=0.7)
    spatch = patches.LumiXBlockPatch("single", 0, single, adapter.for_single(0), RELEASE, 0.7, lumix_attention)
    assert torch.equal(spatch({"img": x, "vec": vec, "pe": pe, "transformer_options": {}},
                              {"original_block": _never})["img"], ref_x)
    with pytest.raises(ValueError, match="batch of 6 is not a multiple of the map count 5"):
        patch({"img": img[:6], "txt": txt[:6], "vec": vec[:6], "pe": pe[:6]}, {})


def test_block_patch_is_shared_by_clones_and_keeps_the_adapter_dtype():
    double, _ = blocks()
    adapter = block_adapter().to(torch.bfloat16)
    patch = patches.LumiXBlockPatch("double", 0, double, adapter.for_double(0), RELEASE, 1.0, lumix_attention)
    options = {"transformer_options": {"patches_replace": {"dit": {("double_block", 0): patch}}}}
    clones = [copy.deepcopy(options) for _ in range(10)]
    assert all(c["transformer_options"]["patches_replace"]["dit"][("double_block", 0)] is patch for c in clones)
    assert patch.to(torch.float32) is patch and patch.to("cpu") is patch and patch.to(device="cpu") is patch
    assert all(p.dtype == torch.bfloat16 for p in adapter.parameters())
    img, txt, vec, pe = block_inputs(5)
    out = patch({"img": img, "txt": txt, "vec": vec, "pe": pe}, {})
    assert out["img"].dtype == torch.float32 and out["img"].isfinite().all()


class _Executor:
    """Stands in for ComfyUI's WrapperExecutor: records the call, exposes ``class_obj``."""

    def __init__(self, class_obj=None, model_options=None):
        self.class_obj = class_obj if class_obj is not None else self
        self.model_options = model_options or {}
        self.calls = []

    def process_latent_in(self, z):
        return (z - 0.1159) * 0.3611

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return args


def test_pin_wrapper_feeds_the_color_slot_clean_at_t0():
    maps = MapSet.parse("albedo,color")
    clean = torch.randn(1, 16, 2, 2)
    wrapper = patches.LumiXPinWrapper(clean, maps, "color")
    assert copy.deepcopy(wrapper) is wrapper
    ex = _Executor()
    x, t = torch.randn(4, 16, 2, 2), torch.full((4,), 0.5)
    out_x, out_t, *_ = wrapper(ex, x, t, None, None, None, {"cond_or_uncond": [1, 0]})
    torch.testing.assert_close(out_x[[1, 3]], ex.process_latent_in(clean).repeat(2, 1, 1, 1))
    assert out_t.tolist() == [0.5, 0.0, 0.5, 0.0] and torch.equal(out_x[[0, 2]], x[[0, 2]])


def test_sampling_guard_refuses_split_batches_and_context_windows(caplog):
    guard = patches.LumiXSamplingGuard(RELEASE, "lumix.safetensors")
    noise = torch.randn(1, 16, 2, 2).repeat(5, 1, 1, 1)
    ex = _Executor()
    assert guard(ex, noise, torch.zeros(5, 16, 2, 2), "sampler")[0] is noise
    with pytest.raises(ValueError, match="LATENT batch of 3 is not a multiple of the map count 5.*"
                                         "LumiX Empty Maps Latent"):
        guard(ex, noise[:3], torch.zeros(3, 16, 2, 2))

    class Handler:
        dim = 0

    with pytest.raises(ValueError, match="context-window handler .*Handler.* slices the batch"):
        guard(_Executor(model_options={"context_handler": Handler()}), noise, torch.zeros(5, 16, 2, 2))
    with caplog.at_level(logging.WARNING, logger="comfyui-lumix"):
        guard(ex, torch.randn(5, 16, 2, 2), torch.zeros(5, 16, 2, 2))
    assert "different noise" in caplog.text


def _outer_sample_args(sigmas):
    """What ComfyUI passes an OUTER_SAMPLE wrapper after (noise, latent): sampler, sigmas, denoise_mask, ..."""
    return ("sampler", torch.tensor(sigmas), None, None, True, 0)


def _pinned_options():
    pin = patches.LumiXPinWrapper(torch.zeros(1, 16, 2, 2), RELEASE, "color")
    return {"transformer_options": {"wrappers": {"apply_model": {"lumix_pin": [pin]}}}}


@pytest.mark.parametrize("objective, sigmas, pinned, noisy, wanted", [
    ("one-step", [1.0, 0.0], True, False, []),
    ("one-step", [1.0, 0.6, 0.3, 0.0], True, False, ["but it is sampled with 3 steps"]),
    ("one-step", [1.0, 0.0], False, False, ["this latent has no pinned photo"]),
    ("one-step", [1.0, 0.0], True, True, ["sampled from random noise"]),
    ("one-step", [1.0, 0.5, 0.0], False, True, ["with 2 steps", "random noise", "no pinned photo"]),
    ("flow-matching", [1.0, 0.0], True, True, ["multi-step (flow-matching) adapter, sampled here in 1 step"]),
    ("flow-matching", [1.0, 0.0], False, False, ["multi-step (flow-matching) adapter, sampled here in 1 step"]),
    ("flow-matching", [1.0, 0.5, 0.0], False, True, []),
])
def test_sampling_guard_warns_when_an_adapter_is_sampled_unlike_it_was_trained(caplog, objective, sigmas, pinned, noisy,
                                                                               wanted):
    guard = patches.LumiXSamplingGuard(RELEASE, "a.safetensors", objective)
    assert guard.objective == objective and copy.deepcopy(guard) is guard
    noise = torch.randn(1, 16, 2, 2).repeat(5, 1, 1, 1) if noisy else torch.zeros(5, 16, 2, 2)
    ex = _Executor(model_options=_pinned_options() if pinned else {})
    with caplog.at_level(logging.WARNING, logger="comfyui-lumix"):
        out = guard(ex, noise, torch.zeros(5, 16, 2, 2), *_outer_sample_args(sigmas))
    assert out[0] is noise and len(ex.calls) == 1  # warned, and sampled all the same
    texts = [r.getMessage() for r in caplog.records if r.name == "comfyui-lumix"]
    assert len(texts) == len(wanted) and all(w in t and t.startswith("LumiX: a.safetensors is a ")
                                             for w, t in zip(wanted, texts)), texts


def test_pinned_output_returns_the_photo_latent_bit_for_bit():
    maps = MapSet.parse("albedo,color")
    clean = torch.randn(2, 16, 2, 2)
    restore = patches.LumiXPinnedOutput(clean, maps, "color")
    assert copy.deepcopy(restore) is restore
    sampled = torch.randn(4, 16, 2, 2)

    class Sampler:
        def __call__(self, noise, latent, *args, **kwargs):
            return sampled + 1e-7  # a host's round-off on the pinned slot

    out = restore(Sampler(), None, None, "sampler", torch.tensor([1.0, 0.0]))
    assert torch.equal(out[1::2], clean) and torch.equal(out[0::2], sampled[0::2] + 1e-7)
    assert not torch.equal(sampled[1::2] + 1e-7, clean)


def test_sampling_guard_checks_the_map_set_the_latent_carries_and_refuses_non_finite_latents():
    from lumix_core.sampling.layout import tag_maps

    four = MapSet.parse("albedo,color,depth,normal")
    guard = patches.LumiXSamplingGuard(four, "four.safetensors")
    noise = torch.randn(20, 16, 2, 2)
    five_scenes = tag_maps(torch.zeros(20, 16, 2, 2), RELEASE)  # 4 scenes x 5 maps: 20 divides by 4 as well
    with pytest.raises(ValueError, match=r"^the latent holds maps albedo,irradiance,color,depth,normal \(M=5\) but the "
                                         r"adapter four.safetensors was trained for albedo,color,depth,normal \(M=4\); "
                                         r"set the latent node's 'maps' to 'albedo,color,depth,normal'$"):
        guard(_Executor(), noise, five_scenes)
    reordered = tag_maps(torch.zeros(8, 16, 2, 2), MapSet.parse("color,albedo,depth,normal"))
    with pytest.raises(ValueError, match=r"holds maps color,albedo,depth,normal \(M=4\) but the adapter four"):
        guard(_Executor(), noise[:8], reordered)
    shared = torch.randn(2, 1, 16, 2, 2).repeat(1, 4, 1, 1, 1).reshape(8, 16, 2, 2)
    assert guard(_Executor(), shared, tag_maps(torch.zeros(8, 16, 2, 2), four))[0] is shared  # the right maps pass
    bad = tag_maps(torch.zeros(8, 16, 2, 2), four)
    bad[5, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^the LATENT to sample holds 4 NaN/inf value\(s\) of 512 \(first in map "
                                         r"color of scene 1\); the node that made it produced invalid values"):
        guard(_Executor(), shared, bad)


# ----------------------------------------------------------------------------- workflows
@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_matches_our_node_definitions(name):
    wf = wt.load(ROOT / "workflows" / f"{name}.json")
    problems = wt.check_workflow(wf, all_classes(), external=CORE_NODES, file_widgets=frozenset({"adapter"}))
    assert problems == []
    types = {n["type"] for n in wf["nodes"]}
    samples = "LumiXDecodeMaps" in types and types & {"LumiXSampler", "SamplerCustomAdvanced"}
    assert "LumiXLoadAdapter" in types and (samples or "LumiXDecomposeShot" in types)
    assert types - set(all_classes()) - wt.VIRTUAL_NODES <= CORE_NODES


def test_every_shipped_workflow_is_tested_and_has_a_thumbnail():
    shipped = {p.stem for p in (ROOT / "workflows").glob("*.json")}
    assert shipped == set(WORKFLOWS)  # a new workflow gets the checks above (and the host runs in tests/host)
    assert all((ROOT / "workflows" / f"{name}.jpg").is_file() for name in shipped)


def test_the_fast_workflow_is_the_one_step_graph():
    """Photo pinned, noise disabled, sigmas [1, 0], euler, one guided pass at guidance 1, a one-step adapter."""
    wf = wt.load(ROOT / "workflows" / "photo_to_intrinsics_fast.json")
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {l[0]: l for l in wf["links"]}

    def source(node, name):
        (inp,) = [i for i in node["inputs"] if i["name"] == name]
        return nodes[links[inp["link"]][1]]

    (sampler,) = [n for n in wf["nodes"] if n["type"] == "SamplerCustomAdvanced"]
    assert source(sampler, "noise")["type"] == "DisableNoise"
    assert source(sampler, "sigmas")["type"] == "LumiXOneStepSchedule"
    assert source(sampler, "sampler")["widgets_values"] == ["euler"]
    guider = source(sampler, "guider")
    assert guider["type"] == "BasicGuider" and source(guider, "conditioning")["widgets_values"] == [1.0]
    pin = source(guider, "model")
    assert pin["type"] == "LumiXPinPhoto" and source(pin, "latent") is source(sampler, "latent_image")
    assert source(pin, "latent")["type"] == "LumiXPhotoToMapsLatent"
    adapter = source(pin, "model")
    assert adapter["type"] == "LumiXLoadAdapter" and adapter["widgets_values"] == ["lumix_one_step.safetensors", 1.0]
    decode = [n for n in wf["nodes"] if n["type"] == "LumiXDecodeMaps"][0]
    assert source(decode, "samples") is sampler
    assert not {"LumiXSampler", "KSampler", "RandomNoise"} & {n["type"] for n in wf["nodes"]}


def test_published_settings_are_in_the_workflows():
    def by_type(wf, t):
        return [n for n in wf["nodes"] if n["type"] == t]

    text = wt.load(ROOT / "workflows" / "text_to_intrinsics.json")
    (sampler,) = by_type(text, "LumiXSampler")
    assert sampler["widgets_values"][2:6] == [50, 3.0, "euler", "lumix_release"]
    assert [n["widgets_values"] for n in by_type(text, "FluxGuidance")] == [[3.5], [3.5]]
    assert by_type(text, "LumiXEmptyMapsLatent")[0]["widgets_values"][:3] == [512, 512, 1]
    assert by_type(text, "UNETLoader")[0]["widgets_values"][0] == "flux1-dev.safetensors"
    assert len(by_type(text, "SaveImage")) == 5
    photo = wt.load(ROOT / "workflows" / "photo_to_intrinsics.json")
    (sampler,) = by_type(photo, "LumiXSampler")
    assert sampler["widgets_values"][3] == 1.0 and by_type(photo, "FluxGuidance")[0]["widgets_values"] == [1.0]
    relight = wt.load(ROOT / "workflows" / "relight.json")
    assert ({"LumiXRelight", "LumiXRecompose", "LumiXConsistencyReport", "LumiXSaveMaps"}
            <= {n["type"] for n in relight["nodes"]})
    # the release's negative prompt (eval/configs/lumix_inference.yaml of the official code)
    for wf in (text, relight):
        (negative,) = [n for n in by_type(wf, "CLIPTextEncode") if n["title"].startswith("Negative")]
        assert negative["widgets_values"] == [RELEASE_NEGATIVE_PROMPT]
    # the official photo decomposition: 1536 x 1152, the photo's caption as prompt (an empty one allowed)
    (scale,) = by_type(photo, "ImageScale")
    assert scale["widgets_values"] == ["lanczos", 1536, 0, "disabled"]
    (caption,) = by_type(photo, "CLIPTextEncode")
    assert "caption" in caption["title"] and caption["widgets_values"] == [""]
    notes = " ".join(n["widgets_values"][0] for n in by_type(photo, "MarkdownNote"))
    assert "1536 x 1152" in notes and "caption" in notes and "mean" in notes
    # the one-step graph stays at its recipe's training size (a one-step adapter learns one call at that size)
    (fast_scale,) = by_type(wt.load(ROOT / "workflows" / "photo_to_intrinsics_fast.json"), "ImageScale")
    assert fast_scale["widgets_values"][1] == 512


def test_workflows_tell_a_new_user_what_to_fetch_and_do_something_new_on_every_run():
    import re

    for name in WORKFLOWS:
        wf = wt.load(ROOT / "workflows" / f"{name}.json")
        seeds = [n["widgets_values"][1] for n in wf["nodes"] if n["type"] in ("LumiXSampler", "PrimitiveNode")
                 and isinstance(n["widgets_values"][0], int)]
        if name == "photo_to_intrinsics_fast":  # one-step decomposition is deterministic: no seed to randomize
            assert seeds == [] and "DisableNoise" in {n["type"] for n in wf["nodes"]}
        elif name == "shot_to_intrinsics":  # one-step too: the shot's seed is unused, kept fixed
            (shot,) = [n for n in wf["nodes"] if n["type"] == "LumiXDecomposeShot"]
            assert seeds == [] and shot["widgets_values"][1:6] == ["fixed", 1, 1.0, "euler", "lumix_one_step"]
        else:
            assert seeds and set(seeds) == {"randomize"}, name
        for node in wf["nodes"]:
            if node["type"] in ("UNETLoader", "DualCLIPLoader", "VAELoader", "LumiXLoadAdapter"):
                models = node["properties"]["models"]
                names = {m["name"] for m in models}
                assert names <= set(node["widgets_values"]) and names, (name, node["type"])
                assert all(m["directory"] for m in models)
                if node["type"] != "LumiXLoadAdapter":  # FLUX files are published; the adapter's URL is not known
                    assert all(m["url"].startswith("https://huggingface.co/") and m["url"].endswith(m["name"])
                               for m in models)
        for note in (n for n in wf["nodes"] if n["type"] == "MarkdownNote"):
            for path in re.findall(r"\b(?:docs|workflows)/[\w./-]+\.\w+", note["widgets_values"][0]):
                assert (ROOT / path).is_file(), (name, path)
    for name in ("photo_to_intrinsics", "photo_to_intrinsics_fast"):
        photo = wt.load(ROOT / "workflows" / f"{name}.json")
        (scale,) = [n for n in photo["nodes"] if n["type"] == "ImageScale"]
        assert scale["widgets_values"][2:] == [0, "disabled"]  # height follows the width: nothing cut off
        assert "scaled to 512 x 512" not in json.dumps(photo)


def test_relight_shows_the_report_and_only_informative_pictures():
    wf = wt.load(ROOT / "workflows" / "relight.json")
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {l[0]: l for l in wf["links"]}
    (report,) = [n for n in wf["nodes"] if n["type"] == "LumiXConsistencyReport"]
    targets = {nodes[links[l][3]]["type"] for l in report["outputs"][0]["links"]}
    assert targets == {"PreviewAny", "LumiXSaveMaps"}
    shown = {report["outputs"][links[l][2]]["name"] for o in report["outputs"][1:] for l in o["links"]}
    assert shown == {"depth_normal_error"}  # normal deviation is black after Decode Maps; recompose error is shown once
    previews = [n for n in wf["nodes"] if n["type"] in ("PreviewImage", "PreviewAny", "SaveImage")]
    assert all(n.get("title") and "heat-map 1" not in n["title"] for n in previews)
    prompt = wt.to_api_prompt(wf, all_classes() | {t: _Core for t in CORE_NODES})
    sampler = next(v for v in prompt.values() if v["class_type"] == "LumiXSampler")["inputs"]
    save = next(v for v in prompt.values() if v["class_type"] == "LumiXSaveMaps")["inputs"]
    encode = next(v for k, v in prompt.items() if nodes[int(k)].get("title") == "Positive prompt")["inputs"]
    assert (sampler["seed"] == save["seed"] == 0 and save["prompt_text"] == encode["text"]
            and "cozy" in save["prompt_text"])
    assert save["report_json"][0] == str(report["id"])


def test_the_workflow_check_catches_shifted_widgets_and_bad_links():
    wf = wt.load(ROOT / "workflows" / "text_to_intrinsics.json")
    broken = json.loads(json.dumps(wf))
    sampler = next(n for n in broken["nodes"] if n["type"] == "LumiXSampler")
    del sampler["widgets_values"][1]  # drop the seed's control value: every later value shifts
    broken["links"][0][5] = "IMAGE"
    problems = wt.check_workflow(broken, all_classes(), external=CORE_NODES, file_widgets=frozenset({"adapter"}))
    assert any("(LumiXSampler): 6 widget values, the definition has 7..7" in p for p in problems)
    assert any("link 1: types" in p for p in problems)
    sampler["widgets_values"].insert(0, 7)  # right count, but the seed's control value is a number
    problems = wt.check_workflow(broken, all_classes(), external=CORE_NODES, file_widgets=frozenset({"adapter"}))
    assert any("seed must be followed by a control value" in p for p in problems)
    sampler["widgets_values"] = [0, "fixed", 50, 3.0, "lumix_release", "euler", 1.0]  # swapped combos
    problems = wt.check_workflow(broken, all_classes(), external=CORE_NODES, file_widgets=frozenset({"adapter"}))
    assert any("sampler_name='lumix_release' is not one of" in p for p in problems)


def test_ui_workflow_converts_to_an_api_prompt():
    wf = wt.load(ROOT / "workflows" / "text_to_intrinsics.json")
    prompt = wt.to_api_prompt(wf, all_classes() | {t: _Core for t in CORE_NODES})
    sampler = next(v for v in prompt.values() if v["class_type"] == "LumiXSampler")
    assert sampler["inputs"]["steps"] == 50 and sampler["inputs"]["scheduler"] == "lumix_release"
    assert sampler["inputs"]["seed"] == 0 and "control_after_generate" not in sampler["inputs"]
    assert isinstance(sampler["inputs"]["model"], list) and sampler["inputs"]["model"][0] in prompt
    assert all(v["class_type"] != "MarkdownNote" for v in prompt.values())


class _Core:
    """Widgets unknown without a host: API conversion keeps only links for ComfyUI's own nodes."""

    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

"""The shipped workflows against a real ComfyUI: every node, link and widget, then a headless run.

The graphs run through ``execution.PromptExecutor`` exactly as shipped except for the model
loaders, which are swapped for test-only nodes with the same sockets and widgets that build
tiny models through ComfyUI's classes (no FLUX weights needed). The API prompt is converted
from the UI file the way the frontend queues it.
"""
import asyncio
import inspect
import json
import logging
import time
import zlib
from pathlib import Path

import lumix_host as H  # skips the module without COMFYUI_PATH
import pytest
import workflow_tools as wt

# isort: split
import execution  # noqa: E402  (ComfyUI)
import folder_paths  # noqa: E402

import nodes as comfy_nodes  # noqa: E402

WORKFLOWS = ("text_to_intrinsics", "photo_to_intrinsics", "photo_to_intrinsics_fast", "relight", "shot_to_intrinsics")
#: Widgets whose choices are the user's model / input files (empty lists in a bare checkout).
FILE_WIDGETS = frozenset({"unet_name", "clip_name1", "clip_name2", "vae_name", "adapter", "image", "file"})


class _TinyClip:
    """What the test text encoder needs from a CLIP: nothing but identity."""


def _loader(output, build, widgets):
    class Loader:
        RETURN_TYPES = (output,)
        FUNCTION = "load"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return widgets

        def load(self, **_):
            return (build(),)

    return Loader


class TestCLIPTextEncode:
    """CLIPTextEncode's sockets and widget; a deterministic tiny embedding per text."""

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}}

    def encode(self, text, clip):
        return (H.conditioning(seed=zlib.crc32(text.encode()), guidance=None),)


STAND_INS = {
    "UNETLoader": ("TestTinyUNETLoader", _loader("MODEL", lambda: H.tiny_flux(seed=0), {"required": {
        "unet_name": (["flux1-dev.safetensors"],), "weight_dtype": (["default"],)}})),
    "DualCLIPLoader": ("TestTinyDualCLIPLoader", _loader("CLIP", _TinyClip, {"required": {
        "clip_name1": (["clip_l.safetensors"],), "clip_name2": (["t5xxl_fp16.safetensors"],), "type": (["flux"],)},
        "optional": {"device": (["default"],)}})),
    "VAELoader": ("TestTinyVAELoader", _loader("VAE", H.tiny_vae, {"required": {"vae_name": (["ae.safetensors"],)}})),
    "CLIPTextEncode": ("TestTinyCLIPTextEncode", TestCLIPTextEncode),
}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """ComfyUI with its built-in extra nodes, our pack, the stand-ins and a models/lumix folder."""
    ok, _ = H.load_pack_as_comfyui(tmp_path_factory.mktemp("comfyui"))
    assert ok
    asyncio.run(comfy_nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    for name, cls in STAND_INS.values():
        comfy_nodes.NODE_CLASS_MAPPINGS[name] = cls
    folder = tmp_path_factory.mktemp("models_lumix")
    H.register_models_dir(folder)
    H.write_adapter(folder / "lumix.safetensors", seed=0)
    H.write_one_step_adapter(folder / "lumix_one_step.safetensors", seed=1)  # what photo_to_intrinsics_fast loads
    return comfy_nodes.NODE_CLASS_MAPPINGS


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_matches_the_hosts_node_definitions(host, name):
    wf = wt.load(H.REPO / "workflows" / f"{name}.json")
    assert wt.check_workflow(wf, host, file_widgets=FILE_WIDGETS) == []


class _Server:
    client_id = None
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


def run_prompt(prompt, prompt_id):
    params = inspect.signature(execution.PromptExecutor.__init__).parameters
    if "cache_args" in params:  # 0.33
        ex = execution.PromptExecutor(_Server(), cache_type=execution.CacheType.CLASSIC,
                                      cache_args={"lru": 0, "ram": 0.0, "ram_inactive": 0.0})
    else:  # 0.3.x
        ex = execution.PromptExecutor(_Server(), cache_type=execution.CacheType.CLASSIC, cache_size=None)
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    assert valid[0], (valid[1], valid[3])
    ex.execute(prompt, prompt_id, {}, valid[2])
    errors = [d for e, d in ex.status_messages if e == "execution_error"]
    assert ex.success, errors[0]["exception_message"] if errors else ex.status_messages
    return ex


def api_prompt(host, name, overrides=None):
    wf = wt.load(H.REPO / "workflows" / f"{name}.json")
    prompt = wt.to_api_prompt(wf, host, {k: v[0] for k, v in STAND_INS.items()})
    for (class_type, key), value in (overrides or {}).items():
        for node in prompt.values():
            if node["class_type"] == class_type:
                node["inputs"][key] = value
    return prompt


def _saved(ex, prompt, tmp_path):
    shown = {}
    for nid, out in ex.history_result["outputs"].items():
        for img in out.get("images", []):
            base = tmp_path if img["type"] == "output" else folder_paths.get_temp_directory()
            path = Path(base) / img["subfolder"] / img["filename"]
            assert path.is_file(), path
            shown.setdefault(prompt[nid]["class_type"], []).append(path)
    return shown


def test_text_to_intrinsics_runs_end_to_end(host, tmp_path):
    """As shipped (50 steps, cfg 3, release schedule) but at 64 px: 512 px takes minutes on 2 CPU cores."""
    from PIL import Image

    prompt = api_prompt(host, "text_to_intrinsics")
    sampler = next(n for n in prompt.values() if n["class_type"] == "LumiXSampler")["inputs"]
    assert (sampler["steps"], sampler["cfg"], sampler["scheduler"]) == (50, 3.0, "lumix_release")
    prompt = api_prompt(host, "text_to_intrinsics", {("LumiXEmptyMapsLatent", "width"): 64,
                                                     ("LumiXEmptyMapsLatent", "height"): 64})
    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        start = time.perf_counter()
        ex = run_prompt(prompt, "lumix-text")
        print(f"text_to_intrinsics (tiny FLUX, 64x64, 50 steps, cfg 3) ran in {time.perf_counter() - start:.1f}s")
    finally:
        folder_paths.set_output_directory(old)
    saved = _saved(ex, prompt, tmp_path)
    assert len(saved["SaveImage"]) == 5
    names = sorted(p.parent.name + "/" + p.name.split("_")[0] for p in saved["SaveImage"])
    assert names == ["LumiX/albedo", "LumiX/color", "LumiX/depth", "LumiX/irradiance", "LumiX/normal"]
    with Image.open(next(p for p in saved["SaveImage"] if p.name.startswith("normal"))) as im:
        assert im.size == (64, 64)


@pytest.mark.parametrize("name", ["photo_to_intrinsics", "photo_to_intrinsics_fast", "relight"])
def test_the_other_workflows_run_at_a_small_size(host, tmp_path, name, caplog):
    """Same graphs, 64 px and 4 steps instead of 512-1536 px / 50 steps, to keep CPU time short (the fast one: 1 step).
    The shipped photo size is checked by ``test_the_photo_workflow_encodes_at_the_releases_size``."""
    small = {("ImageScale", "width"): 64, ("LumiXEmptyMapsLatent", "width"): 64,
             ("LumiXEmptyMapsLatent", "height"): 64, ("LumiXSampler", "steps"): 4,
             ("LumiXConsistencyReport", "analysis_size"): 64, ("LumiXSaveMaps", "save_exr"): _has_openexr()}
    prompt = api_prompt(host, name, small)
    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        with caplog.at_level(logging.WARNING, logger="comfyui-lumix"):
            ex = run_prompt(prompt, f"lumix-{name}")
    finally:
        folder_paths.set_output_directory(old)
    warned = [r.getMessage() for r in caplog.records if r.name == "comfyui-lumix" and r.levelno >= logging.WARNING]
    assert warned == [], warned  # each graph samples its adapter the way it was trained
    saved = _saved(ex, prompt, tmp_path)
    if name.startswith("photo_to_intrinsics"):
        assert len(saved["SaveImage"]) == 5
    else:
        assert len(saved["LumiXSaveMaps"]) == 5 and len(saved["SaveImage"]) == 1  # maps + the relit image
        assert len(saved["PreviewImage"]) == 3  # color estimate, recompose error, depth vs normal
        shown = [out["text"] for nid, out in ex.history_result["outputs"].items()
                 if prompt[nid]["class_type"] == "PreviewAny"]
        (report_file,) = (tmp_path / "LumiX").glob("maps_*_report.json")
        report = json.loads(report_file.read_text())
        assert report["scenes"] and json.loads("".join(shown[0])) == report  # the numbers, shown and saved


class _SizeVAE:
    """A VAE that records the pixels it is given and returns a zero FLUX latent of their size."""

    def __init__(self):
        self.sizes = []

    def encode(self, pixels):
        import torch

        n, h, w, _ = pixels.shape
        self.sizes.append((w, h))
        return torch.zeros(n, 16, h // 8, w // 8)


@pytest.mark.parametrize("photo, expected", [((800, 600), (1536, 1152)), ((640, 360), (1536, 864)),
                                             ((1000, 777), (1536, 1184)), ((64, 64), (1536, 1536))])
def test_the_photo_workflow_encodes_at_the_releases_size(host, photo, expected):
    """The shipped Upscale Image + Photo To Maps Latent: long side 1536, both sides multiples of 16 (the official
    script decomposes at 1536 x 1152); run outside the end-to-end test, whose tiny VAE would take minutes there."""
    import torch

    prompt = api_prompt(host, "photo_to_intrinsics")
    scale = next(n for n in prompt.values() if n["class_type"] == "ImageScale")["inputs"]
    encode = next(n for n in prompt.values() if n["class_type"] == "LumiXPhotoToMapsLatent")
    scale_id = next(k for k, n in prompt.items() if n["class_type"] == "ImageScale")
    assert encode["inputs"]["image"][0] == scale_id  # the scaled photo is what the latent node encodes
    assert prompt[scale["image"][0]]["class_type"] == "LoadImage"
    width, height = photo
    with torch.inference_mode():
        (image,) = host["ImageScale"]().upscale(torch.rand(1, height, width, 3), **{k: v for k, v in scale.items()
                                                                                   if k != "image"})
        vae = _SizeVAE()
        (latent,) = host["LumiXPhotoToMapsLatent"]().encode(image, vae, encode["inputs"]["maps"])
    assert vae.sizes == [expected]
    assert latent["samples"].shape[-2:] == (expected[1] // 8, expected[0] // 8)


def _has_openexr():
    try:
        import OpenEXR  # noqa: F401

        return True
    except ImportError:
        return False


def test_a_missing_adapter_file_is_reported_with_where_it_goes(host):
    """What the browser shows on Queue when models/lumix lacks the file (instead of 'Value not in list')."""
    prompt = api_prompt(host, "text_to_intrinsics", {("LumiXLoadAdapter", "adapter"): "lumix_v2.safetensors"})
    valid = asyncio.run(execution.validate_prompt("lumix-missing", prompt, None))
    assert not valid[0]
    details = [e["details"] for node in valid[3].values() for e in node["errors"]]
    assert any("adapter file 'lumix_v2.safetensors' is in neither ComfyUI/models/lumix nor models/loras: put the LumiX "
               "adapter (e.g. lumix.safetensors) into ComfyUI/models/lumix" in d for d in details), details
    assert not any("not in list" in d for d in details)

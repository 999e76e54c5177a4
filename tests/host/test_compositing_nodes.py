"""LumiX Save Maps inside a real ComfyUI checkout (COMFYUI_PATH): output folder, UI result."""
import json
import os
import sys
from pathlib import Path

import pytest

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
if not COMFYUI_PATH:
    pytest.skip("COMFYUI_PATH is not set: host tests need a ComfyUI checkout", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for pack_import
if COMFYUI_PATH not in sys.path:
    sys.path.insert(0, COMFYUI_PATH)

import torch  # noqa: E402
from comfy.cli_args import args  # noqa: E402  (ComfyUI)

args.cpu = True  # before anything imports comfy.model_management: no GPU needed

import folder_paths  # noqa: E402  (ComfyUI)
from pack_import import pack_module  # noqa: E402


def test_save_maps_node_writes_into_the_comfyui_output_folder(tmp_path):
    nodes = pack_module("nodes.compositing")
    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        maps = {k: torch.rand(2, 8, 10, 3) for k in ("albedo", "irradiance", "color", "depth", "normal")}
        exr = True
        try:
            import OpenEXR  # noqa: F401
        except ImportError:
            exr = False
        node = nodes.LumiXSaveMaps()
        result = node.save("LumiX/test", True, True, exr, "opengl", False, prompt_text="a room", seed=3,
                           prompt={"1": {"class_type": "LumiXSaveMaps", "inputs": {}}},
                           extra_pnginfo={"workflow": {"nodes": []}}, **maps)
        again = node.save("LumiX/test", True, False, False, "opengl", False, **maps)
    finally:
        folder_paths.set_output_directory(old)
    images = result["ui"]["images"]
    assert len(images) == 10
    for item in images:
        assert item["type"] == "output" and item["subfolder"] == "LumiX"
        assert (tmp_path / "LumiX" / item["filename"]).is_file()
    assert {i["filename"] for i in again["ui"]["images"]}.isdisjoint({i["filename"] for i in images})
    from PIL import Image

    with Image.open(tmp_path / "LumiX" / images[0]["filename"]) as im:
        im.load()
        assert json.loads(im.text["prompt"])["1"]["class_type"] == "LumiXSaveMaps"
        assert im.text["lumix.prompt"] == "a room"
    if exr:
        assert len(list((tmp_path / "LumiX").glob("*.exr"))) == 2
    # ComfyUI's own `nodes` module is not shadowed by the pack's nodes/ folder (found, not executed)
    import importlib.util

    origin = importlib.util.find_spec("nodes").origin
    assert origin == os.path.join(COMFYUI_PATH, "nodes.py"), origin

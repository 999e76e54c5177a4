"""Compositing nodes as thin adapters, run without ComfyUI (the pack imported as a package)."""
import json
import sys
import types

import pytest
import torch
from pack_import import pack_module

nodes = pack_module("nodes.compositing")


def maps(n=1, h=12, w=16):
    g = torch.Generator().manual_seed(0)
    out = {k: torch.rand(n, h, w, 3, generator=g) for k in ("albedo", "irradiance", "color", "depth")}
    vec = torch.randn(n, h, w, 3, generator=g)
    out["normal"] = (vec / vec.norm(dim=-1, keepdim=True) + 1) / 2
    return out


def test_mappings_and_every_input_has_a_tooltip():
    assert set(nodes.NODE_CLASS_MAPPINGS) == set(nodes.NODE_DISPLAY_NAME_MAPPINGS)
    assert len(nodes.NODE_CLASS_MAPPINGS) == 4
    for key, cls in nodes.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "LumiX/Compositing" and cls.DESCRIPTION and callable(getattr(cls, cls.FUNCTION))
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (kind, *opts) in spec.get(section, {}).items():
                assert opts and opts[0].get("tooltip"), f"{key}.{name} has no tooltip"
    assert nodes.LumiXSaveMaps.OUTPUT_NODE is True


def test_relight_node():
    m = maps()
    (out,) = nodes.LumiXRelight().relight(m["albedo"], m["normal"], 30.0, 45.0, "#ffffff", 1.0, 0.1, "opengl",
                                          depth=m["depth"], irradiance=m["irradiance"], falloff=0.5, keep_shading=0.3)
    assert out.shape == (1, 12, 16, 3) and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="#RRGGBB"):
        nodes.LumiXRelight().relight(m["albedo"], m["normal"], 0, 0, "red", 1, 0, "opengl")


def test_recompose_node():
    m = maps(n=2)
    estimate, heat = nodes.LumiXRecompose().recompose(m["albedo"], m["irradiance"], m["color"], True)
    assert estimate.shape == heat.shape == (2, 12, 16, 3)


def test_consistency_node_returns_json_and_heatmaps():
    m = maps()
    text, *heat = nodes.LumiXConsistencyReport().report(60.0, "opengl", 0.0, "fit", 64, **m)
    report = json.loads(text)
    assert report["scenes"][0]["skipped"] == [] and "how_to_read" in report
    assert [h.shape for h in heat] == [(1, 12, 16, 3)] * 3


def test_save_node_with_a_fake_output_folder(tmp_path, monkeypatch):
    fake = types.ModuleType("folder_paths")
    fake.get_output_directory = lambda: str(tmp_path)
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    m = maps()
    result = nodes.LumiXSaveMaps().save("LumiX/maps", True, True, False, "opengl", False,
                                        prompt_text="p", seed=5, prompt={"1": {"class_type": "X"}}, **m)
    images = result["ui"]["images"]
    assert len(images) == 5 and all(i["subfolder"] == "LumiX" and i["type"] == "output" for i in images)
    assert len(list((tmp_path / "LumiX").iterdir())) == 7  # 5 x 8-bit + depth/normal 16-bit
    with pytest.raises(ValueError, match="outside the output folder"):
        nodes.LumiXSaveMaps().save("../escape", True, False, False, "opengl", False, **m)

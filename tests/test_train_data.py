"""Dataset reading: layouts, a specific message per bad file, crops shared by all maps."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from train_helpers import MAPS3, write_dataset, write_png

from lumix_core.maps import MapSet
from lumix_core.train.crop import CropSpec, apply_crop, plan_crop
from lumix_core.train.data import DatasetError, check_scene, read_image, scan_dataset
from lumix_core.train.prepare import load_scene_images


def _problems(root, maps=MAPS3):
    scenes, problems = scan_dataset(root, maps)
    for scene in scenes:
        problems += check_scene(scene)[2]
    return scenes, problems


def test_release_and_plain_layouts_are_read(tmp_path):
    release = write_dataset(tmp_path / "release", ["ai_001_cam0", "ai_002_cam1"])
    assert (release / "diffuse_reflectance" / "ai_001_cam0_diffuse_reflectance.png").is_file()
    scenes, problems = _problems(release)
    assert problems == []
    assert [s.scene_id for s in scenes] == ["ai_001_cam0", "ai_002_cam1"]
    assert scenes[0].images["albedo"].parent.name == "diffuse_reflectance"
    assert check_scene(scenes[0])[:2] == ("a room number 0", (32, 32))

    plain = write_dataset(tmp_path / "plain", ["a", "b"], layout="plain")
    scenes, problems = _problems(plain)
    assert problems == [] and [s.scene_id for s in scenes] == ["a", "b"]
    assert scenes[1].images["albedo"] == plain / "albedo" / "b.png"
    assert check_scene(scenes[1])[0] == "a room number 1"


def test_each_bad_file_gets_its_own_message(tmp_path):
    root = write_dataset(tmp_path / "d", ["ok", "nomap", "badsize", "broken", "nocap", "emptycap", "badjson"])
    (root / "depth" / "nomap_depth.png").unlink()
    write_png(root / "color" / "badsize_color.png", np.zeros((48, 32, 3)))
    (root / "diffuse_reflectance" / "broken_diffuse_reflectance.png").write_bytes(b"not a png at all")
    (root / "captions_blip2" / "nocap_color.json").unlink()
    (root / "captions_blip2" / "emptycap_color.json").write_text(json.dumps({"caption": "   "}))
    (root / "captions_blip2" / "badjson_color.json").write_text("{caption: oops")
    scenes, problems = _problems(root)
    by_id = {p.scene_id: p for p in problems}
    assert [s.scene_id for s in scenes if s.scene_id not in by_id] == ["ok"]
    assert "missing the 'depth' map" in str(by_id["nomap"]) and "depth/nomap_depth.png" in str(by_id["nomap"])
    assert "image sizes disagree" in by_id["badsize"].message
    assert "albedo 32x32, color 32x48, depth 32x32" in by_id["badsize"].message
    assert by_id["broken"].message.startswith("unreadable image")
    assert by_id["broken"].path.name == "broken_diffuse_reflectance.png"
    assert "missing caption" in by_id["nocap"].message
    assert by_id["emptycap"].message == "empty caption"
    assert "not valid JSON" in by_id["badjson"].message
    assert len(problems) == 6


def test_missing_map_folder_and_duplicates(tmp_path):
    root = write_dataset(tmp_path / "d", ["x"], maps=MapSet.parse("albedo,color"))
    with pytest.raises(DatasetError, match="no folder for the 'depth' map .*depth"):
        scan_dataset(root, MAPS3)
    (root / "albedo").mkdir()
    with pytest.raises(DatasetError, match="several folders hold the 'albedo' map"):
        scan_dataset(root, MapSet.parse("albedo,color"))
    (root / "albedo").rmdir()
    write_png(root / "color" / "x.png", np.zeros((32, 32, 3)))  # x_color.png and x.png: the same scene twice
    _, problems = scan_dataset(root, MapSet.parse("albedo,color"))
    assert len(problems) == 1 and "two 'color' images" in problems[0].message


def test_sixteen_bit_grey_and_alpha_images_are_read(tmp_path):
    depth = np.linspace(0, 65535, 32 * 16, dtype=np.float64).reshape(16, 32).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), depth)
    img = read_image(tmp_path / "d.png")
    assert img.shape == (16, 32, 3) and img.dtype == np.float32
    assert img[0, 0, 0] == 0.0 and img[-1, -1, 2] == 1.0
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 2] = 255  # BGR(A): red
    rgba[..., 3] = 10
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    assert np.array_equal(read_image(tmp_path / "a.png")[0, 0], [1.0, 0.0, 0.0])


def test_crop_sizes_are_multiples_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        CropSpec.parse("500")
    with pytest.raises(ValueError, match="not a multiple of 16.*--size"):
        plan_crop(40, 40, CropSpec.parse(None), "s")
    plan = plan_crop(640, 480, CropSpec.parse("512"), "s")
    assert plan.resize == (683, 512) and (plan.width, plan.height) == (512, 512) and plan.left == 85
    assert plan_crop(480, 640, CropSpec.parse("768x512"), "s").resize == (768, 1024)


def test_one_crop_for_all_maps_of_a_scene(tmp_path):
    """Identical content in every map folder must come out identical after a random resize+crop."""
    maps = MAPS3
    rng = np.random.default_rng(0)
    for sid in ("s0", "s1", "s2"):
        content = rng.random((48, 80, 3))
        for name in maps.names:
            folder = maps.folder_name(name)
            write_png(tmp_path / folder / f"{sid}_{folder}.png", content)
        (tmp_path / "captions_blip2").mkdir(exist_ok=True)
        (tmp_path / "captions_blip2" / f"{sid}_color.json").write_text(json.dumps({"caption": sid}))
    scenes, problems = _problems(tmp_path)
    assert problems == []
    spec = CropSpec.parse("32", mode="random", seed=7)
    lefts = set()
    for scene in scenes:
        images = load_scene_images(scene, maps, spec)
        assert images.shape == (3, 32, 32, 3)
        assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])
        plan = plan_crop(80, 48, spec, scene.scene_id)
        assert plan.resize == (53, 32)
        lefts.add(plan.left)
        expected = apply_crop(read_image(scene.images["color"]), plan)
        assert np.array_equal(images[maps.index("color")], expected)
        # Same seed and id -> same window on every run; a different seed moves it.
        assert plan_crop(80, 48, spec, scene.scene_id) == plan
    assert len(lefts) > 1, "random crops should differ between scenes"

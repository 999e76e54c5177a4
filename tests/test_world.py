"""Synthetic intrinsic world, its dataset writer and the ground-truth metrics.

Analytic checks compare the renderer against formulas written out here, independently of
the ray caster (pixel-ray geometry, sphere normals, floor normal from the camera pitch).
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lumix_core import conventions
from lumix_core.maps import RELEASE, RELEASE_FOLDER_NAMES
from lumix_core.toy.scoring.light_check import VISIBLE_STEP, left_half_mean
from lumix_core.world.dataset import CAPTION_FOLDER, GROUND_TRUTH_FOLDER, main, write_world_dataset
from lumix_core.world.metrics import (
    depth_abs_rel,
    evaluate_maps,
    linear_si_mse,
    map_coherence,
    normal_angular_error,
)
from lumix_core.world.render import project_to_pixels, render
from lumix_core.world.scene import (
    MAIN_LIGHT_DISTANCE,
    PALETTE,
    Box,
    Camera,
    Light,
    Material,
    Plane,
    SceneSpec,
    Sphere,
    caption_tokens,
    caption_vocabulary,
    describe_surface,
    light_direction_word,
    main_light,
    main_light_word,
    mirror_main_light,
    sample_scene,
)

SIZE = 64
CAM = Camera(position=(0.0, 1.5, 4.0), target=(0.0, 0.5, 0.0), fov_deg=40.0)
FLOOR = Plane((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), Material(("gray",)), "floor")


def pixel_ndc(camera: Camera, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image-plane x, y (unit distance) of every pixel centre, written out independently."""
    tan_half = math.tan(math.radians(camera.fov_deg) / 2)
    c = (np.arange(size) + 0.5) / size * 2 - 1
    return np.meshgrid(c * tan_half, -c * tan_half)


def sphere_scene(center=(0.0, 0.5, 0.0), radius=0.5, light_dir=(0.3, 1.0, 0.5)) -> SceneSpec:
    return SceneSpec(
        objects=(Sphere(center, radius, Material(("red",))),),
        floor=FLOOR,
        lights=(Light("directional", tuple(np.asarray(light_dir) / np.linalg.norm(light_dir)), intensity=0.7),),
        camera=CAM,
        ambient=(0.2, 0.2, 0.2),
        wall=Plane((0.0, 0.0, -3.0), (0.0, 0.0, 1.0), Material(("white",)), "wall"),
    )


def to_camera(p_world: np.ndarray, camera: Camera) -> np.ndarray:
    """World to OpenGL camera space for a camera with zero yaw and roll (the test camera)."""
    dy = camera.position[1] - camera.target[1]
    dz = camera.position[2] - camera.target[2]
    pitch = math.atan2(dy, dz)
    q = np.asarray(p_world, dtype=np.float64) - np.asarray(camera.position)
    c, s = math.cos(pitch), math.sin(pitch)
    return np.stack([q[..., 0], c * q[..., 1] - s * q[..., 2], s * q[..., 1] + c * q[..., 2]], axis=-1)


# ------------------------------------------------------------------ geometry


def test_sphere_normals_are_unit_and_match_the_geometry():
    spec = sphere_scene()
    r = render(spec, SIZE)
    on_sphere = r.object_id == 0
    assert on_sphere.sum() > 200
    n, p = r.normal[on_sphere].astype(np.float64), r.position[on_sphere].astype(np.float64)
    c = to_camera(np.asarray(spec.objects[0].center), CAM)
    # unit length, hit points on the sphere, n = (p - c) / r; tolerance 1e-5 (float32 storage)
    assert np.abs(np.linalg.norm(n, axis=-1) - 1).max() < 1e-5
    assert np.abs(np.linalg.norm(p - c, axis=-1) - 0.5).max() < 1e-5
    assert np.abs(n - (p - c) / 0.5).max() < 1e-5
    # every hit point lies on its own pixel's ray (pinhole model, pixel centres)
    gx, gy = pixel_ndc(CAM, SIZE)
    pos = r.position.astype(np.float64)
    assert np.abs(pos[..., 0] / -pos[..., 2] - gx).max() < 1e-5
    assert np.abs(pos[..., 1] / -pos[..., 2] - gy).max() < 1e-5
    # silhouette: rays passing clearly inside the sphere hit it, clearly outside do not
    dirs = np.stack([gx, gy, -np.ones_like(gx)], axis=-1)
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    miss_distance = np.linalg.norm(np.cross(dirs, c), axis=-1)
    assert on_sphere[miss_distance < 0.49].all()
    assert not on_sphere[miss_distance > 0.51].any()


def test_depth_agrees_with_normals_on_the_floor():
    spec = sphere_scene()
    r = render(spec, SIZE)
    assert r.hit.all()
    assert np.array_equal(r.depth, -r.position[..., 2])
    # camera-space points rebuilt from depth alone, normals from their finite differences
    gx, gy = pixel_ndc(CAM, SIZE)
    z = r.depth.astype(np.float64)
    pts = np.stack([gx * z, gy * z, -z], axis=-1)
    du = pts[1:-1, 2:] - pts[1:-1, :-2]
    dv = pts[:-2, 1:-1] - pts[2:, 1:-1]
    n_depth = np.cross(du, dv)
    n_depth /= np.linalg.norm(n_depth, axis=-1, keepdims=True)
    floor_id = len(spec.objects)
    fid = r.object_id == floor_id
    interior = fid[1:-1, 1:-1] & fid[:-2, 1:-1] & fid[2:, 1:-1] & fid[1:-1, :-2] & fid[1:-1, 2:]
    assert interior.sum() > 1000
    n_buf = r.normal[1:-1, 1:-1][interior].astype(np.float64)
    angle = np.degrees(np.arccos(np.clip((n_depth[interior] * n_buf).sum(-1), -1, 1)))
    assert angle.max() < 0.5  # degrees; a plane, so only float32 rounding separates them
    # and both equal the analytic floor normal: world up seen from a camera pitched by theta
    theta = math.atan2(1.0, 4.0)
    expected = np.array([0.0, math.cos(theta), math.sin(theta)])
    assert np.abs(n_buf - expected).max() < 1e-5


def test_boxes_have_axis_normals_and_double_sided_planes_face_the_camera():
    box = Box((0.0, 0.4, 0.0), (0.4, 0.4, 0.3), Material(("blue",)), yaw=0.5)
    wall = Plane((0.0, 0.0, -2.0), (0.0, 0.0, -1.0), Material(("white",)), "wall")  # normal pointing away
    spec = SceneSpec((box,), FLOOR, (Light("directional", (0.0, 1.0, 0.0)),), CAM, wall=wall)
    r = render(spec, SIZE)
    world_to_cam = to_camera(np.eye(3) + CAM.position, CAM)  # row i: world axis i in camera space
    n_world = r.normal.astype(np.float64) @ world_to_cam.T
    on_box = r.object_id == 0
    c, s = math.cos(0.5), math.sin(0.5)
    local_axes = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])  # box axes in world coordinates
    dots = np.abs(n_world[on_box] @ local_axes.T)
    assert np.abs(dots.max(axis=1) - 1).max() < 1e-5  # every box normal is one of its axes
    assert (r.normal[..., 2][r.hit] > 0).all()  # every visible surface faces the camera


# ------------------------------------------------------------------ shading


def test_color_is_albedo_times_irradiance_exactly():
    for seed in range(5):
        r = render(sample_scene(seed), 32)
        assert r.color.dtype == np.float32
        assert np.array_equal(r.color, r.albedo * r.irradiance)
        enc = r.encode()
        assert list(enc) == list(RELEASE.names)
        assert np.array_equal(enc["color"], conventions.linear_to_srgb(
            torch.from_numpy(np.clip(r.color.astype(np.float64), 0, 1))).numpy().astype(np.float32))


def test_cast_shadow_under_a_sphere_lit_from_above():
    spec = sphere_scene(center=(0.0, 1.2, 0.0), radius=0.4, light_dir=(0.0, 1.0, 0.0))
    r = render(spec, SIZE)
    floor_points = np.array([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0]])
    (ri, ci), (rj, cj) = np.floor(project_to_pixels(CAM, floor_points, SIZE)).astype(int)
    floor_id = len(spec.objects)
    assert r.object_id[ri, ci] == floor_id and r.object_id[rj, cj] == floor_id
    shadowed, lit = r.irradiance[ri, ci], r.irradiance[rj, cj]
    assert np.allclose(shadowed, 0.2, atol=1e-6)  # ambient only
    assert np.allclose(lit, 0.2 + 0.7, atol=1e-6)  # ambient + light * (n . l = 1)
    assert r.color[ri, ci].sum() < r.color[rj, cj].sum()


# ------------------------------------------------------------------ sampling and captions


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b, c = sample_scene(7), sample_scene(7), sample_scene(8)
    assert a == b and a != c
    ra, rb, rc = render(a, 32), render(b, 32), render(c, 32)
    for name in ("albedo", "irradiance", "color", "depth", "normal", "position", "hit", "object_id"):
        assert np.array_equal(getattr(ra, name), getattr(rb, name), equal_nan=name == "position")
    assert not np.array_equal(ra.color, rc.color)
    assert a.caption == b.caption


def test_caption_names_what_is_rendered():
    for seed in range(30):
        spec = sample_scene(seed)
        r = render(spec, 48)
        text = spec.caption
        assert r.hit.all(), f"seed {seed}: pixels without a surface"
        assert f"on {describe_surface(spec.floor)}" in text
        if spec.wall is not None:
            assert f"in front of {describe_surface(spec.wall)}" in text
        for k, obj in enumerate(spec.objects):
            assert describe_surface(obj) in text, (seed, text)
            pixels = r.object_id == k
            assert pixels.sum() >= 6, f"seed {seed}: {describe_surface(obj)} is not visible"
            if obj.material.kind == "flat":  # the named colour is the rendered albedo
                albedo = conventions.linear_to_srgb(torch.from_numpy(r.albedo[pixels].astype(np.float64)))
                assert np.abs(albedo.numpy() - PALETTE[obj.material.colors[0]]).max() < 1e-4
        light = main_light(spec)
        towards = np.asarray(light.vector) - (np.asarray(spec.camera.target) if light.kind == "point" else 0.0)
        word = light_direction_word(towards, spec.camera)
        assert text.endswith({"left": "the left", "right": "the right", "front": "the front"}.get(word, word))
        assert set(caption_tokens(text)) <= set(caption_vocabulary())


def test_side_light_word_matches_shading():
    checked = 0
    for seed in range(60):
        spec = sample_scene(seed)
        text = spec.caption
        side = "left" if text.endswith("the left") else "right" if text.endswith("the right") else None
        if side is None:
            continue
        r = render(spec, 48)
        objects = r.object_id < len(spec.objects)
        nx = r.normal[..., 0]
        facing_left = r.irradiance.mean(-1)[objects & (nx < -0.3)]
        facing_right = r.irradiance.mean(-1)[objects & (nx > 0.3)]
        if len(facing_left) < 5 or len(facing_right) < 5:
            continue
        brighter_left = facing_left.mean() > facing_right.mean()
        assert brighter_left == (side == "left"), (seed, text)
        checked += 1
    assert checked >= 5


def test_sampled_scenes_never_clip_and_the_exposure_only_scales_the_light():
    """The main light is a lamp (a point light): nearer surfaces get more than its irradiance at
    the target, so the camera's exposure brings the brightest pixel down to 1 -- the encoded
    irradiance never clips and stays the light's exact share of color."""
    scaled = 0
    for seed in range(40):
        spec = sample_scene(seed)
        assert main_light(spec).kind == "point"
        assert np.isclose(np.linalg.norm(np.subtract(main_light(spec).vector, spec.camera.target)),
                          MAIN_LIGHT_DISTANCE)
        r = render(spec, 32)
        assert 0.0 < r.exposure <= 1.0 and r.irradiance.max() <= 1.0
        if r.exposure < 1.0:
            scaled += 1
            assert np.isclose(r.irradiance.max(), 1.0, atol=1e-6)
            brighter = dataclasses.replace(spec, lights=tuple(dataclasses.replace(l, intensity=2 * l.intensity)
                                                              for l in spec.lights),
                                           ambient=tuple(2 * a for a in spec.ambient))
            np.testing.assert_allclose(render(brighter, 32).irradiance, r.irradiance, atol=1e-6)
    assert scaled >= 5


def test_light_from_the_left_brightens_the_left_half_of_the_irradiance():
    """What "light from the left" promises a viewer (and the caption-following check asks of a
    model): the scene lit from the left has a brighter left half than the same scene lit from the
    right. A lamp shows it; a directional light did not (the floor's n.l was the same)."""
    checked = 0
    for seed in range(60):
        spec = sample_scene(seed)
        if main_light_word(spec) not in ("left", "right"):
            continue
        lit, mirrored = (render(s, 32).irradiance for s in (spec, mirror_main_light(spec)))
        left, right = (lit, mirrored) if main_light_word(spec) == "left" else (mirrored, lit)
        assert left_half_mean(left) > left_half_mean(right) + VISIBLE_STEP, seed
        checked += 1
    assert checked >= 10


def test_mirrored_main_light_swaps_left_and_right_and_changes_nothing_else():
    swapped = 0
    for seed in range(40):
        spec = sample_scene(seed)
        mirrored = mirror_main_light(spec)
        word = main_light_word(spec)
        assert word == spec.caption.rsplit("light from ", 1)[1].split()[-1]
        if word in ("left", "right"):
            assert main_light_word(mirrored) == {"left": "right", "right": "left"}[word]
            swapped += 1
        elif word in ("above", "front", "behind"):
            assert main_light_word(mirrored) == word
        twice = mirror_main_light(mirrored)
        np.testing.assert_allclose(main_light(twice).vector, main_light(spec).vector, atol=1e-12)
        assert (mirrored.objects, mirrored.floor, mirrored.camera, mirrored.wall) == \
               (spec.objects, spec.floor, spec.camera, spec.wall)
        assert [l for l in mirrored.lights if l is not main_light(mirrored)] == \
               [l for l in spec.lights if l is not main_light(spec)]
    assert swapped >= 5


def test_vocabulary_is_exactly_what_the_grammar_produces():
    produced: set[str] = set()
    for seed in range(400):
        produced |= set(caption_tokens(sample_scene(seed).caption))
    assert produced == set(caption_vocabulary())


# ------------------------------------------------------------------ metrics


@pytest.fixture(scope="module")
def scene():
    r = render(sample_scene(3), SIZE)
    return r, r.encode()


def test_normal_error_zero_when_perfect_and_equal_to_a_known_rotation(scene):
    r, enc = scene
    assert normal_angular_error(enc["normal"], enc["normal"]) < 1e-5
    a = math.radians(10.0)
    rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    n = r.normal.astype(np.float64)
    rotated = (n @ rot.T + 1) / 2  # unclipped encoding, so nothing but the rotation differs
    # rotating v by a about x turns it by arccos(x^2 + (1 - x^2) cos a)
    expected = np.degrees(np.arccos(n[..., 0] ** 2 + (1 - n[..., 0] ** 2) * math.cos(a))).mean()
    assert expected > 5.0
    assert abs(normal_angular_error(rotated, enc["normal"]) - expected) < 1e-3
    noisy = np.clip(enc["normal"] + np.random.default_rng(0).normal(0, 0.05, enc["normal"].shape), 0, 1)
    assert normal_angular_error(noisy, enc["normal"]) > 1.0


def test_depth_abs_rel_is_affine_invariant_and_grows_with_error(scene):
    r, enc = scene
    d = enc["depth"]
    assert depth_abs_rel(d, r.depth) < 1e-6
    assert depth_abs_rel(0.3 * d + 0.2, r.depth) < 1e-6
    assert depth_abs_rel(1.0 - d, r.depth) < 1e-6  # polarity flip is an affine map too
    assert depth_abs_rel(d[..., 0], r.depth) < 1e-6  # single channel accepted
    noisy = d + np.random.default_rng(0).normal(0, 0.05, d.shape)
    err = depth_abs_rel(noisy, r.depth)
    assert err > 0.01
    assert depth_abs_rel(noisy * 2 - 0.5, r.depth) == pytest.approx(err, rel=1e-9)


def test_linear_si_mse_forgives_scale_only(scene):
    r, enc = scene
    a = enc["albedo"]
    assert linear_si_mse(a, a) < 1e-12
    half_linear = conventions.linear_to_srgb(conventions.srgb_to_linear(torch.from_numpy(
        a.astype(np.float64))) * torch.tensor([0.5, 0.7, 0.9], dtype=torch.float64)).numpy()
    assert linear_si_mse(half_linear, a) < 1e-10
    assert linear_si_mse(half_linear, a, per_channel=False) > 1e-4  # a tint is not one global scale
    blurred = (a + np.roll(a, 2, axis=0) + np.roll(a, 2, axis=1)) / 3
    assert linear_si_mse(blurred, a) > 1e-4


def test_map_coherence_cannot_be_gamed_by_copying_or_noise():
    """The true maps must score clearly better than the two cheap ways to look coherent:
    the color pasted into every map (edge agreement with color rewarded exactly that) and
    one independent noise image per map; also better than mixing in another scene's maps."""
    scenes = [render(sample_scene(s), 48) for s in range(4)]
    g = torch.Generator().manual_seed(0)
    rows: dict[str, list[dict[str, float]]] = {"truth": [], "copy": [], "noise": [], "other_scene": []}
    for i, r in enumerate(scenes):
        enc = {k: torch.from_numpy(v) for k, v in r.encode().items()}
        other = {k: torch.from_numpy(v) for k, v in scenes[(i + 1) % len(scenes)].encode().items()}
        rows["truth"].append(map_coherence(enc))
        rows["copy"].append(map_coherence({k: enc["color"] for k in enc}))
        rows["noise"].append(map_coherence({k: v if k == "color" else torch.rand(v.shape, generator=g)
                                            for k, v in enc.items()}))
        rows["other_scene"].append(map_coherence({**enc, "albedo": other["albedo"], "depth": other["depth"]}))
    mean = {k: {m: float(np.mean([row[m] for row in v])) for m in v[0]} for k, v in rows.items()}
    truth = mean["truth"]
    assert set(truth) == {"recompose_error", "depth_normal_error_deg"}
    assert truth["recompose_error"] < 1e-3 and truth["depth_normal_error_deg"] < 6.0, truth
    for baseline in ("copy", "noise", "other_scene"):
        b = mean[baseline]
        assert b["recompose_error"] > 0.1, (baseline, b)  # truth: < 0.001
        assert b["depth_normal_error_deg"] > truth["depth_normal_error_deg"] + 15.0, (baseline, b)


def test_map_coherence_needs_only_the_maps_it_names(scene):
    r, enc = scene
    assert set(map_coherence({"depth": enc["depth"][..., 0], "normal": enc["normal"]})) == {"depth_normal_error_deg"}
    assert set(map_coherence({k: enc[k] for k in ("albedo", "irradiance", "color")})) == {"recompose_error"}
    assert map_coherence({"color": enc["color"]}) == {}


def test_evaluate_maps_on_perfect_prediction(scene):
    r, enc = scene
    truth = {"depth": r.depth, "normal": r.normal, "albedo": r.albedo, "irradiance": r.irradiance, "hit": r.hit}
    m = evaluate_maps(enc, truth)
    assert m["normal_angular_error_deg"] < 0.01
    assert m["depth_abs_rel"] < 1e-6 and m["albedo_si_mse"] < 1e-10
    assert m["irradiance_si_mse"] < 1e-10
    assert map_coherence(enc)["recompose_error"] < 1e-3


# ------------------------------------------------------------------ dataset writer


def test_dataset_writer_release_layout_and_refusal(tmp_path):
    root = tmp_path / "world"
    ids = write_world_dataset(root, count=3, seed=5, size=32)
    assert ids == ["000000", "000001", "000002"]
    for sid in ids:
        for name in RELEASE.names:
            folder = RELEASE_FOLDER_NAMES[name]
            img = Image.open(root / folder / f"{sid}_{folder}.png")
            assert img.mode == "RGB" and img.size == (32, 32)
            if name == "depth":
                arr = np.asarray(img)
                assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()
        cap = json.loads((root / CAPTION_FOLDER / f"{sid}_color.json").read_text())
        gt = np.load(root / GROUND_TRUTH_FOLDER / f"{sid}.npz")
        spec = sample_scene(int(gt["seed"]))
        assert cap == {"caption": spec.caption}
        assert np.array_equal(gt["depth"], render(spec, 32).depth)
        assert {"depth", "normal", "albedo", "irradiance"} <= set(gt.files)
    assert not [p for p in root.rglob("*.tmp")]
    # the PNGs are the encoded maps, rounded to 8 bits
    enc = render(sample_scene(int(np.load(root / GROUND_TRUTH_FOLDER / "000001.npz")["seed"])), 32).encode()
    png = np.asarray(Image.open(root / "normal" / "000001_normal.png")).astype(np.float64) / 255
    assert np.abs(png - enc["normal"]).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(FileExistsError):
        write_world_dataset(root, count=1, seed=5, size=32)
    assert write_world_dataset(root, count=1, seed=6, size=32, overwrite=True) == ["000000"]


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--count", "2", "--seed", "1", "--size", "16"]) == 0
    assert sorted(p.name for p in (out / "diffuse_reflectance").iterdir()) == [
        "000000_diffuse_reflectance.png", "000001_diffuse_reflectance.png"]
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(out), "--count", "1"])
    assert exc.value.code == 2 and "not empty" in capsys.readouterr().err


def test_cli_refuses_sizes_that_prepare_would_refuse(tmp_path, capsys):
    out = tmp_path / "never"
    for size, fix in (("40", "--size 32"), ("8", "--size 16"), ("0", "--size 16")):
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(out), "--count", "1", "--size", size])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1, err
        assert "argument --size: the image side must be a positive multiple of 16 pixels" in err
        assert "lumix-train prepare" in err and fix in err
    with pytest.raises(ValueError, match="not a multiple of 16"):
        write_world_dataset(out, count=1, size=40)
    assert not out.exists()


def test_cli_not_empty_message_names_the_flag_not_the_python_argument(tmp_path, capsys):
    out = tmp_path / "set"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(out), "--count", "1", "--size", "16"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "is not empty; choose a new or empty folder, or write into it anyway with --overwrite" in err
    assert "overwrite=True" not in err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]

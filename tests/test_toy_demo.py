"""``lumix demo`` with the shipped toy weights: files, timing, refusals, and that the maps are
better than chance against the synthetic world's renderer.

Thresholds are loose on purpose and stated in each test: they check that the shipped model
learned something real (beats a trivial or a permuted baseline), not that it is good.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lumix_core.cli import main
from lumix_core.conventions import vectors_to_normals
from lumix_core.toy.demo import DEFAULT_PROMPT, FILE_PREFIX, run_demo
from lumix_core.toy.evaluate import TARGETS
from lumix_core.toy.model import (
    ADAPTER_FILE,
    BACKBONE_FILE,
    CARD_FILE,
    ONE_STEP_ADAPTER_FILE,
    TEXT_FILE,
    WEIGHTS_DIR,
    ToyLumiX,
)
from lumix_core.toy.scoring.held_out import EvalSettings, held_out_scenes
from lumix_core.toy.scoring.light_check import VISIBLE_STEP, light_left_minus_right
from lumix_core.toy.scoring.object_checks import object_checks
from lumix_core.toy.scoring.references import random_normal_deviation
from lumix_core.world.metrics import depth_abs_rel, normal_angular_error

MAPS = ("albedo", "irradiance", "color", "depth", "normal")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> ToyLumiX:
    return ToyLumiX.load()


def test_shipped_weights_are_small_and_complete():
    sizes = {p.name: p.stat().st_size for p in WEIGHTS_DIR.iterdir()}  # everything shipped, both adapters
    assert {BACKBONE_FILE, TEXT_FILE, ADAPTER_FILE, ONE_STEP_ADAPTER_FILE, CARD_FILE} <= set(sizes), sizes
    assert sum(sizes.values()) <= 25 * 10**6, sizes  # the shipped folder stays under 25 MB
    card = ToyLumiX.card()
    assert card["made_by"] == "python -m lumix_core.toy.reproduce" and card["stage2"]["share_query"] is True


def test_demo_writes_the_maps_and_a_sheet_without_overwriting(tmp_path, capsys):
    start = time.perf_counter()
    assert main(["demo", "--prompt", DEFAULT_PROMPT, "--out", str(tmp_path)]) == 0
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"demo took {elapsed:.1f} s on CPU"
    first = sorted(p.name for p in tmp_path.iterdir())
    assert first == sorted([f"{FILE_PREFIX}_00001_00_{m}.png" for m in MAPS] + [f"{FILE_PREFIX}_00001_sheet.png"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["demo", "--prompt", DEFAULT_PROMPT, "--out", str(tmp_path), "--seed", "1"]) == 0
    assert len(list(tmp_path.iterdir())) == 12
    assert all((tmp_path / name).read_bytes() == data for name, data in before.items())  # nothing replaced
    from PIL import Image

    sheet = Image.open(tmp_path / f"{FILE_PREFIX}_00001_sheet.png")
    assert sheet.width > 5 * 64 and sheet.text.get("lumix.prompt") == DEFAULT_PROMPT
    assert "contact sheet:" in capsys.readouterr().out


def test_unknown_words_are_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["demo", "--prompt", "a red dragon on a gray flor", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'dragon'" in err and "did you mean floor" in err and "Known words:" in err
    assert not out.exists()


def test_python_dash_m_entry_point(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "lumix_core", "demo", "--out", str(tmp_path), "--steps", "4"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / f"{FILE_PREFIX}_00001_sheet.png").is_file()


def test_generated_normals_are_closer_to_unit_length_than_noise(tmp_path, model):
    """Before renormalisation the decoded normal map's mean | |n| - 1 | must be below 3/4 of that
    of a uniformly random normal map (noise: ~0.23; the shipped model gives ~0.09 for this
    prompt) -- the model learned that the map is made of unit vectors."""
    result = run_demo(DEFAULT_PROMPT, tmp_path, model=model)
    noise = random_normal_deviation((64, 64))
    assert result.normal_deviation < 0.75 * noise, (result.normal_deviation, noise)


def test_decomposed_geometry_beats_trivial_guesses_on_held_out_renders(model):
    """Color of held-out renders pinned (photo decomposition): the predicted normals must beat
    "every normal faces the camera" and the predicted depth must beat a flat depth map, by at
    least 10 % each, averaged over 6 scenes never seen in training (the shipped model: 26 vs 48
    degrees, AbsRel 0.17 vs 0.30)."""
    scenes = held_out_scenes(6)
    color = torch.from_numpy(np.stack([r.encode(["color"])["color"] for r in scenes]))
    maps = model.generate([r.caption for r in scenes], seed=0, true_cfg=1.0, color=color)
    facing = vectors_to_normals(torch.tensor([0.0, 0.0, 1.0]).expand(64, 64, 3))
    ours_n, base_n, ours_d, base_d = [], [], [], []
    for n, r in enumerate(scenes):
        gt = vectors_to_normals(torch.from_numpy(r.normal))
        ours_n.append(normal_angular_error(maps["normal"].image[n], gt))
        base_n.append(normal_angular_error(facing, gt))
        ours_d.append(depth_abs_rel(maps["depth"].image[n], r.depth))
        base_d.append(depth_abs_rel(torch.full((64, 64), 0.5), r.depth))
    assert np.mean(ours_n) < 0.9 * np.mean(base_n), (np.mean(ours_n), np.mean(base_n))
    assert np.mean(ours_d) < 0.9 * np.mean(base_d), (np.mean(ours_d), np.mean(base_d))


def test_generated_colors_follow_the_caption_better_than_a_permuted_pairing(model):
    """From the caption alone, the generated albedo's mean colour must be closer to the mean
    albedo of the render of *that* caption than to the renders of the other captions (mean
    distance, matched vs all mismatched pairs, over 8 held-out captions; the shipped model gives
    ~0.06 vs ~0.17)."""
    scenes = held_out_scenes(8)
    maps = model.generate([r.caption for r in scenes], seed=0, steps=12)  # 12 steps: enough for mean colours
    gen = maps["albedo"].image.mean(dim=(1, 2))  # [8, 3]
    ref = torch.from_numpy(np.stack([r.encode()["albedo"].mean(axis=(0, 1)) for r in scenes]))
    dist = torch.cdist(gen.double(), ref.double())
    matched = dist.diagonal().mean()
    mismatched = dist[~torch.eye(len(scenes), dtype=torch.bool)].mean()
    assert matched < mismatched, (float(matched), float(mismatched))


def test_light_from_the_left_brightens_the_left_half_of_the_generated_irradiance(model):
    """The light-following target on two of the evaluation's 16 seeds, with the shipped multi-step
    adapter: "light from the left" against "from the right" (same seed) must brighten the left half
    of the generated irradiance by at least the visible step (5/255) in both. The shipped model
    gives about +42/255 on average; the model of the directional-light world gave +0.7/255."""
    for index in (0, 1):
        assert light_left_minus_right(model, EvalSettings(), index) >= VISIBLE_STEP, index


@pytest.fixture(scope="module")
def first_seed_checks(model) -> list[dict[str, float]]:
    """The evaluation's colour and shape checks on its first seed (14 single-object prompts)."""
    return object_checks(model, EvalSettings(), 0)


def test_the_named_colour_dominates_the_generated_albedo(first_seed_checks):
    """The colour-following target on the first of the evaluation's two seeds (its 14 single-object
    prompts), with the shipped multi-step adapter: the named colour must be the dominant saturated
    one of the generated albedo in at least the target's share. The shipped model gets 13 of 14."""
    hits = [c["color"] for c in first_seed_checks]
    assert np.mean(hits) >= TARGETS["color_following"][1], hits


@pytest.mark.xfail(strict=True, reason="the shipped toy draws blobs; its objects' normals are "
                   "far from a sphere's, and every one reads as a box (0.5, chance; docs/toy_model.md). "
                   "strict: a model that draws recognisable shapes makes this XPASS and fail, so the marker must "
                   "then be removed")
def test_the_generated_objects_are_the_named_shapes(first_seed_checks):
    """The same generations, shape check (lumix_core.toy.shape_check): the object of the named
    colour must read as the named shape in at least the target's share of the prompts."""
    hits = [c["shape"] for c in first_seed_checks]
    assert np.mean(hits) >= TARGETS["shape_following"][1], hits

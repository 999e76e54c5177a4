"""The toy's scoring pieces: each must tell the truth from the cheap ways to fake it."""
from __future__ import annotations

import torch

from lumix_core.toy.evaluate import summary_table
from lumix_core.toy.scoring.caption_checks import caption_following_of_truth
from lumix_core.toy.scoring.held_out import held_out_scenes, truth_of
from lumix_core.toy.scoring.map_scores import reads_photo
from lumix_core.toy.scoring.object_checks import SATURATED_COLORS, dominant_color
from lumix_core.toy.scoring.references import reference_scores
from lumix_core.world.metrics import evaluate_maps
from lumix_core.world.scene import PALETTE


def _encoded(r):
    return {k: torch.from_numpy(v) for k, v in r.encode().items()}


def test_reads_photo_is_one_for_the_truth_and_zero_for_a_swapped_prediction():
    scenes = held_out_scenes(3, size=32)
    truths = [_encoded(r) for r in scenes]
    rows = [evaluate_maps(t, truth_of(r)) for t, r in zip(truths, scenes)]
    reads_photo(rows, truths, scenes)
    assert all(r["reads_photo_depth"] == 1.0 and r["reads_photo_normal"] == 1.0 for r in rows)
    # predicting the *next* scene's maps is exactly what a photo-blind model would do at worst
    swapped = [truths[(i + 1) % 3] for i in range(3)]
    rows = [evaluate_maps(p, truth_of(r)) for p, r in zip(swapped, scenes)]
    reads_photo(rows, swapped, scenes)
    assert all(r["reads_photo_depth"] == 0.0 and r["reads_photo_normal"] == 0.0 for r in rows)


def test_dominant_color_names_the_object_colour_and_ignores_the_floor():
    h = w = 16
    albedo = torch.tensor(PALETTE["gray"]).expand(h, w, 3).clone()  # a gray floor everywhere ...
    albedo[4:9, 4:9] = torch.tensor(PALETTE["blue"])  # ... and a small blue object
    assert dominant_color(albedo) == "blue"
    assert dominant_color(torch.tensor(PALETTE["white"]).expand(h, w, 3)) is None
    assert "gray" not in SATURATED_COLORS and "red" in SATURATED_COLORS


def test_reference_rows_rank_truth_above_trivial_and_baselines():
    refs = reference_scores(held_out_scenes(4, size=32))
    truth, vae, trivial = refs["ground_truth"], refs["ground_truth_vae"], refs["trivial"]
    for key in ("normal_angular_error_deg", "depth_abs_rel", "albedo_si_mse", "irradiance_si_mse"):
        assert truth[key] < 1e-4 and vae[key] < trivial[key], key  # float32 round trips
    assert refs["trivial_flat_irradiance"]["irradiance_si_mse"] > vae["irradiance_si_mse"]
    for baseline in ("copy_color", "independent_noise"):
        assert refs[baseline]["recompose_error"] > 10 * truth["recompose_error"] + 0.1
        assert refs[baseline]["depth_normal_error_deg"] > truth["depth_normal_error_deg"] + 15
    # The prior (one set of mean maps for every photo) beats the trivial geometry guesses and
    # loses to the truth: the bar a photo-blind model can reach, so a reading model must beat it.
    prior = refs["prior"]
    for key in ("normal_angular_error_deg", "depth_abs_rel"):
        assert vae[key] < prior[key] < trivial[key], key
    table = summary_table({"decomposition": truth, "generation": truth, **refs})
    assert "decomposition depth_abs_rel" in table and "<= 0.05" in table and "½ trivial" in table
    assert " prior " in table.splitlines()[0]


def test_caption_following_checks_scored_on_the_worlds_own_truth():
    """Both checks must pass on the world's own truth (else they measure nothing): the colour
    check on true albedos, the light check on true irradiance with the main light mirrored (the
    lamp lights its own side of the floor, which a directional light would light the same from
    either side, docs/toy_model.md). The truth's scores are printed beside the model's."""
    truth = caption_following_of_truth(held_out_scenes(32), seeds=4)
    assert truth["color_prompts"] >= 3 and truth["color_following"] == 1.0 and truth["shape_following"] == 1.0
    assert truth["light_following"] == 1.0 and truth["light_left_minus_right"] > 0.0
    table = summary_table({"decomposition": {}, "generation": {}, "caption_following": truth,
                           "caption_following_of_truth": truth, **reference_scores(held_out_scenes(2, size=32))})
    assert "world's own truth" in table


def test_steps_sweep_is_checked_before_anything_runs(capsys):
    from lumix_core.toy.evaluate import main

    assert main(["--steps-sweep", "1,x"]) == 2
    assert "--steps-sweep takes step counts >= 1" in capsys.readouterr().err
    assert main(["--steps-sweep", "0,4"]) == 2

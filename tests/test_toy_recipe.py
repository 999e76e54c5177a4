"""A micro run of the whole toy recipe: stage 1, dataset, the trainer's prepare and fit, sampling.

Sizes are cut to the bone (16 x 16 images = 4 tokens, a 32-wide FLUX with one block of each
kind, a few steps), so this checks that the stages fit together, not that the model learns;
the shipped model's quality is tested in test_toy_demo.py.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lumix_core.io.safetensors_io import read_header
from lumix_core.model.checkpoint import inspect_adapter, load_adapter
from lumix_core.model.flux_io import load_flux
from lumix_core.toy.backbone import toy_config
from lumix_core.toy.model import ADAPTER_FILE, BACKBONE_FILE, ONE_STEP_ADAPTER_FILE, TEXT_FILE, ToyLumiX
from lumix_core.toy.recipe import (
    ONE_STEP_SETTINGS,
    Stage2Settings,
    fit_adapter,
    prepare_cache,
    train_backbone,
    write_maps_dataset,
)
from lumix_core.toy.reproduce import assemble_weights
from lumix_core.toy.stage1 import Stage1Settings
from lumix_core.toy.text import ToyTextEncoder
from lumix_core.train.cache import LatentCache

SIZE = 16


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_stage1")
    settings = replace(Stage1Settings(), scenes=6, steps=3, batch_size=2, warmup_steps=1)
    losses = []
    result = train_backbone(out, settings, config=toy_config(hidden_size=32, depth=1, depth_single_blocks=1),
                            size=SIZE, on_step=lambda step, loss: losses.append(loss))
    assert len(result.losses) == 3 and losses == result.losses
    return out


def test_stage1_writes_a_loadable_backbone_and_text_encoder(stage1_dir):
    model = load_flux(stage1_dir / BACKBONE_FILE)
    assert model.config.hidden_size == 32 and model.config.in_channels == 64 and not model.config.guidance_embed
    assert ToyTextEncoder.load(stage1_dir / TEXT_FILE).vocabulary
    with pytest.raises(FileExistsError):
        train_backbone(stage1_dir, replace(Stage1Settings(), scenes=1, steps=1), size=SIZE)


def test_stage1_is_fixed_by_its_seed_whatever_ran_before(stage1_dir, tmp_path):
    """The text table's init follows the settings' seed, not the global RNG, so a "same recipe" run
    does not depend on whatever drew random numbers before it."""
    settings = replace(Stage1Settings(), scenes=6, steps=3, batch_size=2, warmup_steps=1)
    config = toy_config(hidden_size=32, depth=1, depth_single_blocks=1)
    torch.manual_seed(12345)
    torch.rand(7)
    train_backbone(tmp_path / "again", settings, config=config, size=SIZE)
    train_backbone(tmp_path / "seed1", replace(settings, seed=1), config=config, size=SIZE)
    texts = {name: ToyTextEncoder.load(folder / TEXT_FILE).state_dict()
             for name, folder in (("first", stage1_dir), ("again", tmp_path / "again"), ("seed1", tmp_path / "seed1"))}
    assert all(torch.equal(texts["first"][k], texts["again"][k]) for k in texts["first"])
    assert not torch.equal(texts["first"]["words.weight"], texts["seed1"]["words.weight"])


def test_two_stage_recipe_end_to_end(stage1_dir, tmp_path):
    write_maps_dataset(tmp_path / "data", 3, data_seed=2, size=SIZE)
    text = ToyTextEncoder.load(stage1_dir / TEXT_FILE)
    cache = prepare_cache(tmp_path / "data", tmp_path / "cache", text)
    assert len(LatentCache(cache)) == 3
    settings = replace(Stage2Settings(), scenes=3, steps=2, batch_size=1, warmup_steps=0, rank=2, holdout=1)
    fit = fit_adapter(cache, stage1_dir / BACKBONE_FILE, tmp_path / "run", settings)
    assert fit.steps == 2 and all(torch.isfinite(torch.tensor(fit.losses)))
    adapter = load_adapter(fit.adapter_path)
    assert any(float(t.abs().sum()) > 0 for k, t in adapter.state_dict().items() if k.endswith("G3"))  # it trained
    fast = fit_adapter(cache, stage1_dir / BACKBONE_FILE, tmp_path / "one_step",
                       replace(ONE_STEP_SETTINGS, scenes=3, steps=2, warmup_steps=0, rank=2, holdout=1))
    # Assemble a model folder like the shipped one (adapters stored as float16) and sample from it.
    folder = assemble_weights(tmp_path / "weights", stage1_dir, fit.adapter_path, fast.adapter_path, {"what": "test"})
    for name, src in ((ADAPTER_FILE, fit.adapter_path), (ONE_STEP_ADAPTER_FILE, fast.adapter_path)):
        shipped, trained = load_adapter(folder / name).state_dict(), load_adapter(src).state_dict()
        assert inspect_adapter(folder / name).metadata == inspect_adapter(src).metadata
        assert read_header(folder / name).tensors[next(iter(trained))].dtype == "F16"
        assert all(torch.allclose(shipped[k].float(), trained[k], rtol=1e-3, atol=1e-6) for k in trained)
    model = ToyLumiX.load(folder)
    maps = model.generate(["a red box on a gray floor, light from above"], steps=2, size=SIZE)
    assert list(maps) == ["albedo", "irradiance", "color", "depth", "normal"]
    assert all(m.image.shape == (1, SIZE, SIZE, 3) for m in maps.values())
    one_step = ToyLumiX.load(folder, adapter=folder / ONE_STEP_ADAPTER_FILE)
    assert one_step.one_step and not model.one_step
    color = maps["color"].image
    assert one_step.generate([""], color=color)["depth"].image.shape == (1, SIZE, SIZE, 3)


@pytest.mark.parametrize("share_query,independent", [(False, True), (False, False)])
def test_ablation_variants_train_through_the_trainer_hooks(stage1_dir, tmp_path, share_query, independent):
    """(b) independent per-map LoRAs keep G1 exactly block-diagonal; (c) only turns QBA off.
    The trainer records share_query in the adapter, and the toy model samples accordingly."""
    write_maps_dataset(tmp_path / "data", 2, data_seed=2, size=SIZE)
    cache = prepare_cache(tmp_path / "data", tmp_path / "cache", ToyTextEncoder.load(stage1_dir / TEXT_FILE))
    settings = replace(Stage2Settings(), scenes=2, steps=2, batch_size=1, warmup_steps=0, rank=2, holdout=0,
                       share_query=share_query, independent_maps=independent)
    fit = fit_adapter(cache, stage1_dir / BACKBONE_FILE, tmp_path / "run", settings)
    adapter = load_adapter(fit.adapter_path)
    off_diagonal = ~torch.eye(5, dtype=torch.bool)
    g1 = [t for k, t in adapter.state_dict().items() if k.endswith("G1")]
    if independent:
        assert all(float(t[off_diagonal].abs().max()) == 0.0 for t in g1)
    else:
        assert all(float(t[off_diagonal].abs().max()) > 0.0 for t in g1)
    assert any(float(t.abs().sum()) > 0 for k, t in adapter.state_dict().items() if k.endswith("G3"))
    model = ToyLumiX.load(stage1_dir, adapter=fit.adapter_path)
    assert model.share_query is share_query and model.backbone.lumix.share_query is share_query


def test_scripts_refuse_to_write_into_a_used_folder(tmp_path, capsys):
    from lumix_core.toy import ablation, reproduce

    (tmp_path / "old.txt").write_text("keep me")
    assert reproduce.main(["--out", str(tmp_path), "--stage1-steps", "1"]) == 2
    assert ablation.main(["--out", str(tmp_path), "--steps", "1"]) == 2
    doc = tmp_path / "ablation.md"
    doc.write_text("previous table")
    assert ablation.main(["--out", str(tmp_path / "new"), "--doc", str(doc)]) == 2
    assert doc.read_text() == "previous table" and (tmp_path / "old.txt").read_text() == "keep me"
    assert "not an empty folder" in capsys.readouterr().err


def test_ablation_keeps_objectives_apart_and_one_step_tables_have_no_generation(tmp_path, capsys):
    from lumix_core.toy import ablation

    out = tmp_path / "abl"
    assert ablation.main(["--out", str(out), "--steps", "1", "--runs", "", "--eval-scenes", "2"]) == 0
    capsys.readouterr()
    assert ablation.main(["--out", str(out), "--steps", "1", "--runs", "", "--objective", "one-step"]) == 2
    assert "other stage-2 settings" in capsys.readouterr().err
    dec = {k: 0.5 for k, *_ in ablation.DEC_COLUMNS}
    refs = {k: dec for k in ("ground_truth", "ground_truth_vae", "prior", "trivial", "copy_color", "independent_noise")}
    meta = {"command": "x", "objective": "one-step", "one_step_loss": "both", "steps": 1, "batch_size": 4,
            "lr": 0.002, "rank": 24, "photo": 1.0, "backbone": "b", "eval_scenes": 2, "sample_steps": 24, "true_cfg": 2}
    table = ablation.render_markdown({"a": {"decomposition": dec, "generation": {}, "stage2_s": 1.0}}, refs, meta)
    assert "one-step objective" in table and "one model call" in table and "generation" not in table
    assert "| (a) QBA + Tensor LoRA | 0.5" in table and "prior" in table
    assert "detail weight" not in table
    assert "normal detail weight 20" in ablation.render_markdown({}, refs, {**meta, "one_step_detail_weight": 20.0})
    assert ablation.main(["--out", str(tmp_path / "w"), "--runs", "", "--one-step-detail-weight", "5"]) == 2
    assert "applies to --objective one-step only" in capsys.readouterr().err
    flow = ablation.render_markdown({}, refs, {**meta, "objective": "flow-matching"})
    assert "generation recompose error" in flow

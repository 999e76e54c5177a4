"""Trainer settings: file + flags precedence, clear errors, what may change on resume."""
from __future__ import annotations

import pytest

from lumix_core.train.cli import build_parser
from lumix_core.train.config import ConfigError, FitConfig, PrepareConfig, build_config, load_config_file, resume_config

REQUIRED = {"cache": "c", "flux": "f.safetensors", "output": "o"}


def test_defaults_file_and_flags_in_order(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("seed: 3\nfit:\n  lr: 5.0e-5\n  steps: 100\n  timestep-sampler: shifted\n"
                         "prepare:\n  size: 512\n")
    toml_file = tmp_path / "c.toml"
    toml_file.write_text('[fit]\nlr = 2e-4\nalpha = "none"\n')
    from_yaml = load_config_file(yaml_file, "fit")
    assert from_yaml == {"seed": 3, "lr": 5e-5, "steps": 100, "timestep_sampler": "shifted"}
    assert load_config_file(yaml_file, "prepare") == {"seed": 3, "size": 512}
    cfg = build_config(FitConfig, from_yaml, {**REQUIRED, "steps": "7"})
    assert (cfg.lr, cfg.steps, cfg.seed, cfg.timestep_sampler, cfg.rank) == (5e-5, 7, 3, "shifted", 8)
    cfg = build_config(FitConfig, load_config_file(toml_file, "fit"), REQUIRED)
    assert cfg.lr == 2e-4 and cfg.alpha is None


def test_flags_are_generated_from_the_config_fields():
    args = build_parser().parse_args(["fit", "--cache", "c", "--no-gradient-checkpointing", "--photo-conditioning-prob",
                                      "0.3"])
    values = {k: v for k, v in vars(args).items() if k not in ("stage", "config_file", "log_level")}
    assert values == {"cache": "c", "gradient_checkpointing": False, "photo_conditioning_prob": "0.3"}


@pytest.mark.parametrize("values, message", [
    ({"learning_rate": 1}, "unknown setting 'learning_rate'"),
    ({"steps": "many"}, "steps: expected int, got 'many'"),
    ({"steps": 2.5}, "steps: expected int"),
    ({"caption_dropout": 1.5}, "caption_dropout is a probability"),
    ({"timestep_sampler": "uniform"}, "timestep_sampler must be one of logit-normal, shifted"),
    ({"resume": True, "overwrite": True}, "contradict"),
    ({"validation_decoder": "comfy"}, "needs --vae"),
])
def test_bad_settings_name_the_setting(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(FitConfig, {}, {**REQUIRED, **values})


def test_missing_required_settings_are_listed():
    with pytest.raises(ConfigError, match="--flux, --output"):
        build_config(FitConfig, {}, {"cache": "c"})


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fit: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config_file(bad, "fit")
    ini = tmp_path / "x.ini"
    ini.write_text("[fit]\n")
    with pytest.raises(ConfigError, match="use a .yaml, .yml or .toml"):
        load_config_file(ini, "fit")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "absent.yaml", "fit")


def test_resume_takes_the_saved_settings_and_only_resumable_changes():
    saved = build_config(FitConfig, {}, {**REQUIRED, "lr": 1e-3, "rank": 4})
    given = build_config(FitConfig, {}, {**REQUIRED, "steps": 5000, "resume": True})
    merged = resume_config(vars(saved), given, explicit={"steps", "resume", *REQUIRED})
    assert (merged.lr, merged.rank, merged.steps, merged.resume) == (1e-3, 4, 5000, True)
    with pytest.raises(ConfigError, match="rank: run has 4, given 16"):
        resume_config(vars(saved), build_config(FitConfig, {}, {**REQUIRED, "rank": 16}), explicit={"rank"})


@pytest.mark.parametrize("values, message", [
    ({"size": "500"}, "size: width 500 and height 500 not a multiple of 16"),
    ({"size": "big"}, "size: size 'big' is not '512' or 'WxH'"),
    ({"maps": "albedo,depth"}, "maps: .*no 'color' map"),
    ({"device": "cuda:1"}, "device must be one of auto, cpu"),
])
def test_bad_prepare_settings(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(PrepareConfig, {}, {"data": "d", "cache": "c", **values})
    assert build_config(PrepareConfig, {"size": 512}, {"data": "d", "cache": "c"}).size == "512"

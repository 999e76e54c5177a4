"""Settings of the two training stages, in one place: defaults, help text, validation.

Why dataclasses with field metadata: the command line, the optional YAML/TOML file and the
resolved ``config.json`` saved beside the checkpoints are all generated from these fields,
so a default or a help string is written exactly once. Precedence: field default < config
file < flags given on the command line.
"""
from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from ..maps import RELEASE, MapSet
from ..model.checkpoint import OBJECTIVE_FLOW_MATCHING, OBJECTIVE_ONE_STEP, OBJECTIVES
from .one_step import ONE_STEP_LOSSES

#: Environment variable naming a ComfyUI checkout (same name as the host tests use).
COMFYUI_ENV = "COMFYUI_PATH"

TIMESTEP_SAMPLERS = ("logit-normal", "shifted")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "bf16", "fp32")
BASE_DTYPES = ("bf16", "fp8")
CACHE_DTYPES = ("bf16", "fp16", "fp32")
CROP_MODES = ("center", "random")
PREPARE_DEVICES = ("auto", "cpu")
VALIDATION_DECODERS = ("preview", "comfy")
SHIFT_SCHEDULES = ("release", "flux")


def _opt(default: Any, help: str, *, resumable: bool = False) -> Any:
    """A config field with its help text; ``resumable`` fields may change on ``--resume``."""
    return field(default=default, metadata={"help": help, "resumable": resumable})


def _req(help: str, *, resumable: bool = False) -> Any:
    return field(metadata={"help": help, "resumable": resumable, "required": True})


class ConfigError(ValueError):
    """A setting that cannot work, with the name of the setting."""


@dataclass
class PrepareConfig:
    """``prepare``: read a dataset once, encode it with the FLUX VAE and text encoders."""

    data: str = _req("dataset root in the release layout: ROOT/<map>/<id>_<map>.png + "
                     "ROOT/captions_blip2/<id>_color.json")
    cache: str = _req("cache folder to create (safetensors shards + manifest.json)")
    maps: str = _opt(RELEASE.to_string(), "maps of each scene, in group order (must include color)")
    comfyui: Optional[str] = _opt(None, f"ComfyUI checkout used to load the encoders (default: ${COMFYUI_ENV})")
    vae: Optional[str] = _opt(None, "FLUX VAE file (ae.safetensors)")
    clip_l: Optional[str] = _opt(None, "CLIP-L text encoder file (clip_l.safetensors)")
    t5: Optional[str] = _opt(None, "T5-XXL text encoder file (t5xxl_fp16.safetensors or an fp8 variant)")
    size: Optional[str] = _opt(None, "target size '512' (square) or 'WxH': resize the short side to cover it, "
                                     "then crop; without it images are used as they are (multiples of 16)")
    crop: str = _opt("center", f"crop placement after the resize: {', '.join(CROP_MODES)} (random uses --seed)")
    seed: int = _opt(0, "seed of the random crops")
    skip_bad: bool = _opt(False, "skip scenes with bad files (each is reported and counted) instead of stopping")
    overwrite: bool = _opt(False, "replace an existing cache folder")
    shard_size: int = _opt(64, "scenes per safetensors shard")
    cache_dtype: str = _opt("bf16", f"dtype of the stored latents and conditioning: {', '.join(CACHE_DTYPES)}")
    device: str = _opt("auto", "auto (ComfyUI picks its GPU; choose one with CUDA_VISIBLE_DEVICES) or cpu")

    def validate(self) -> None:
        _check_choice("device", self.device, PREPARE_DEVICES)
        _check_choice("crop", self.crop, CROP_MODES)
        if self.size is not None:
            from .crop import CropSpec

            try:
                CropSpec.parse(self.size, self.crop, self.seed)
            except ValueError as e:
                raise ConfigError(f"size: {e}") from None
        _check_choice("cache_dtype", self.cache_dtype, CACHE_DTYPES)
        _check_positive("shard_size", self.shard_size)
        _check_maps(self.maps)


@dataclass
class FitConfig:
    """``fit``: train a LumiX adapter on a prepared cache."""

    cache: str = _req("cache folder written by 'prepare'", resumable=True)
    flux: str = _req("FLUX.1 transformer weights (BFL flux1-dev.safetensors or a ComfyUI checkpoint)",
                     resumable=True)
    output: str = _req("run folder: checkpoints, metrics.jsonl, validation sheets, adapter.safetensors",
                       resumable=True)
    steps: int = _opt(2000, "optimizer steps in total", resumable=True)
    batch_size: int = _opt(1, "scenes per micro-batch on each process (each scene is M maps)")
    grad_accum: int = _opt(1, "micro-batches accumulated per optimizer step")
    lr: float = _opt(1e-4, "peak learning rate of AdamW")
    warmup_steps: int = _opt(100, "linear learning-rate warmup from 0")
    lr_schedule: str = _opt("constant", f"after warmup: {', '.join(LR_SCHEDULES)} (cosine decays to 0 at --steps)")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    adam_beta1: float = _opt(0.9, "AdamW beta1")
    adam_beta2: float = _opt(0.999, "AdamW beta2")
    adam_eps: float = _opt(1e-8, "AdamW epsilon")
    max_grad_norm: float = _opt(1.0, "clip the adapter's gradient norm (0 disables)")
    rank: int = _opt(8, "Tensor LoRA rank R (the release uses 8)")
    alpha: Optional[float] = _opt(None, "Tensor LoRA alpha (scale = alpha/sqrt(R); none = 1/sqrt(R) as released)")
    init_adapter: Optional[str] = _opt(None, "start from this LumiX adapter (e.g. the release) instead of the "
                                             "fresh init")
    share_query: bool = _opt(True, "Query-Broadcast Attention: every map attends with the color map's queries "
                                   "(--no-share-query gives each map its own queries; for ablations)")
    independent_maps: bool = _opt(False, "hold G1 block-diagonal so each map's adapter reads only its own input, "
                                         "i.e. one independent LoRA per map (for ablations)")
    objective: str = _opt(OBJECTIVE_FLOW_MATCHING, "flow-matching (the release: many-step sampling, text and photo) or "
                                           "one-step (photo decomposition in one deterministic step: the color "
                                           "pinned at t=0, the other maps fed 0 at t=1, loss on the clean maps; "
                                           "start it from a flow-matching adapter with --init-adapter)")
    one_step_loss: str = _opt("latent", "loss space of --objective one-step: latent (any decoder), pixel "
                                        "(angular normals, scale/shift-invariant depth on decoded maps: needs a "
                                        "differentiable decoder, i.e. the toy VAE) or both")
    one_step_detail_weight: float = _opt(0.0, "pixel and both one-step losses: weigh each pixel's normal error by "
                                              "1 + W x how far its true normal is from the mean normal around it, so "
                                              "curved surfaces and edges (small objects) count more than large "
                                              "planes (0: every pixel alike)")
    timestep_sampler: str = _opt("logit-normal", "training timesteps: logit-normal (t = sigmoid(N(mean, std))) "
                                                 "or shifted (uniform t mapped by the resolution shift)")
    logit_mean: float = _opt(0.0, "mean of the logit-normal sampler")
    logit_std: float = _opt(1.0, "std of the logit-normal sampler")
    shift_schedule: str = _opt("release", f"token count used by the shifted sampler: {', '.join(SHIFT_SCHEDULES)} "
                                          "(release = the LumiX sampling quirk, flux = stock FLUX)")
    guidance: float = _opt(1.0, "distilled-guidance input during training (FLUX-dev; ignored by schnell)")
    caption_dropout: float = _opt(0.1, "probability of training a scene with the empty caption (keeps CFG working)")
    photo_conditioning_prob: float = _opt(0.0, "probability of feeding the color map clean at t=0 and leaving it "
                                               "out of the loss (trains photo decomposition)")
    precision: str = _opt("auto", "auto (bf16 weights + autocast on CUDA, fp32 on CPU), bf16 or fp32")
    base_dtype: str = _opt("bf16", "storage of the frozen FLUX block weights: bf16 (the --precision weight dtype) "
                                   "or fp8 (float8_e4m3fn + one scale per weight, cast to the compute dtype layer "
                                   "by layer: half the memory; bf16 files are quantized as they load, fp8 files "
                                   "used as they are)")
    gradient_checkpointing: bool = _opt(True, "recompute each block in backward (needed to fit FLUX-dev)")
    blocks_to_swap: int = _opt(0, "keep the last N FLUX blocks in CPU memory and copy each to the GPU just before "
                                  "it runs, the next one while the current computes (FLUX.1-dev: up to 56 of its "
                                  "57; N - 2 blocks of GPU memory saved, 2 transfer slots; needs gradient "
                                  "checkpointing; same results, slower)", resumable=True)
    seed: int = _opt(0, "seed of the adapter init, data order, noise, timesteps and dropouts")
    checkpoint_every: int = _opt(250, "write a resumable checkpoint every N steps (0: only at the end)", resumable=True)
    keep_checkpoints: int = _opt(2, "how many step checkpoints to keep (0 keeps all)", resumable=True)
    validate_every: int = _opt(250, "write a validation contact sheet every N steps (0: only at the end)",
                               resumable=True)
    validation_scenes: int = _opt(2, "scenes of the cache (their prompts) shown on the contact sheet", resumable=True)
    holdout: int = _opt(0, "scenes at the end of the cache kept out of training; at every validation their "
                           "flow-matching loss (fixed noise and t, with and without the photo pinned) goes to "
                           "evaluations.jsonl, curves.csv and curves.png")
    validation_steps: int = _opt(20, "Euler steps of the validation samples", resumable=True)
    validation_guidance: float = _opt(3.5, "distilled guidance of the validation samples", resumable=True)
    validation_seed: int = _opt(0, "noise seed of the validation samples", resumable=True)
    validation_decoder: str = _opt("preview", "preview (first 3 latent channels, normalised) or comfy "
                                              "(FLUX VAE through ComfyUI: needs --comfyui and --vae)", resumable=True)
    comfyui: Optional[str] = _opt(None, f"ComfyUI checkout for the comfy validation decoder (default: ${COMFYUI_ENV})",
                                  resumable=True)
    vae: Optional[str] = _opt(None, "FLUX VAE file for the comfy validation decoder", resumable=True)
    resume: bool = _opt(False, "continue the run in --output from its latest checkpoint", resumable=True)
    overwrite: bool = _opt(False, "delete an existing run in --output and start again", resumable=True)
    device: str = _opt("auto", "auto, cpu, cuda (torchrun: each process uses cuda:LOCAL_RANK)", resumable=True)
    backend: Optional[str] = _opt(None, "torch.distributed backend (default: nccl on CUDA, gloo on CPU)",
                                  resumable=True)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "rank", "validation_scenes", "validation_steps"):
            _check_positive(name, getattr(self, name))
        for name in ("warmup_steps", "checkpoint_every", "keep_checkpoints", "validate_every", "holdout",
                     "blocks_to_swap"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        for name in ("caption_dropout", "photo_conditioning_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name} is a probability in [0, 1], got {p}")
        if self.one_step_detail_weight < 0:
            raise ConfigError(f"one_step_detail_weight must be >= 0, got {self.one_step_detail_weight}")
        if self.one_step_detail_weight and (self.objective != OBJECTIVE_ONE_STEP or self.one_step_loss == "latent"):
            raise ConfigError("--one-step-detail-weight weighs the pixel normal loss: it needs --objective one-step "
                              "with --one-step-loss pixel or both")
        if self.logit_std <= 0:
            raise ConfigError(f"logit_std must be > 0, got {self.logit_std}")
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("one_step_loss", self.one_step_loss, ONE_STEP_LOSSES)
        _check_choice("timestep_sampler", self.timestep_sampler, TIMESTEP_SAMPLERS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("base_dtype", self.base_dtype, BASE_DTYPES)
        _check_choice("shift_schedule", self.shift_schedule, SHIFT_SCHEDULES)
        _check_choice("validation_decoder", self.validation_decoder, VALIDATION_DECODERS)
        if self.blocks_to_swap and not self.gradient_checkpointing:
            raise ConfigError("--blocks-to-swap needs gradient checkpointing: without it autograd keeps every "
                              "swapped block's weights on the GPU until backward; drop --no-gradient-checkpointing")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: resume continues the run in "
                              "--output, overwrite deletes it")
        if self.validation_decoder == "comfy" and not self.vae:
            raise ConfigError("validation_decoder 'comfy' needs --vae (the FLUX VAE file) and a ComfyUI checkout")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got '{value}'")


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")


def _check_maps(spec: str) -> None:
    try:
        MapSet.parse(spec)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"maps: {e}") from None


# ------------------------------------------------------------------------- config sources
def load_config_file(path: "str | os.PathLike[str]", section: str) -> dict[str, Any]:
    """Settings from a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file.

    The file may hold the settings at its top level or under a ``prepare:`` / ``fit:``
    section, so one file can configure both stages. Hyphens in keys are read as underscores.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError(f"config file {path.name}: use a .yaml, .yml or .toml file")
    try:
        if suffix == ".toml":
            import tomllib
        else:
            import yaml
    except ImportError:
        need = "Python 3.11+ (tomllib)" if suffix == ".toml" else "PyYAML (pip install pyyaml)"
        raise ConfigError(f"reading {path.name} needs {need}; or use the other file format") from None
    try:
        data = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except Exception as e:  # parser errors carry the line number in their message
        raise ConfigError(f"config file {path}: {e}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings, got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    if section in data and isinstance(data[section], dict):
        inner = {str(k).replace("-", "_"): v for k, v in data[section].items()}
        shared = {k: v for k, v in data.items() if k not in ("prepare", "fit") and not isinstance(v, dict)}
        return {**shared, **inner}
    return {k: v for k, v in data.items() if k not in ("prepare", "fit")}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check/convert one value to its field type (files give strings or ints for floats)."""
    optional = get_origin(hint) is Union and type(None) in get_args(hint)
    base = next((a for a in get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{name} cannot be empty")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, (list, tuple)):  # maps given as a list
                return ",".join(str(v) for v in value)
            return str(value)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{name}: expected {getattr(base, '__name__', base)}, got {value!r}")


def build_config(cls: type, file_values: Optional[dict[str, Any]] = None,
                 cli_values: Optional[dict[str, Any]] = None) -> Any:
    """Field defaults < config file < command line; unknown keys and missing required ones are errors."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    merged: dict[str, Any] = {}
    for source, values in (("config file", file_values or {}), ("command line", cli_values or {})):
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown setting '{unknown[0]}' in the {source}; valid settings: "
                              f"{', '.join(sorted(names))}")
        for k, v in values.items():
            merged[k] = _coerce(k, v, hints[k])
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in merged]
    if missing:
        raise ConfigError(f"missing required setting(s): {', '.join('--' + m.replace('_', '-') for m in missing)}")
    config = cls(**merged)
    config.validate()
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


def comfyui_path(explicit: Optional[str]) -> Optional[str]:
    """The ComfyUI checkout: the setting if given, else ``$COMFYUI_PATH``."""
    return explicit or os.environ.get(COMFYUI_ENV) or None


def resume_config(saved: dict[str, Any], given: FitConfig, explicit: Optional[set[str]] = None) -> FitConfig:
    """The config of a resumed run: the saved one, with only ``resumable`` settings taken from ``given``.

    A setting that shapes the training (lr, rank, seed, batch...) cannot change mid-run
    without breaking exact resumption; if the user sets one to a different value, say so.
    ``explicit`` names the settings the user actually gave (None: all of them).
    """
    names = {f.name: f for f in fields(FitConfig)}
    unknown = sorted(set(saved) - set(names))
    if unknown:
        raise ConfigError(f"the saved run config has unknown setting '{unknown[0]}'; it was written by another "
                          "version of the trainer")
    current = config_to_dict(given)
    merged = dict(saved)
    conflicts = []
    for name, f in names.items():
        if f.metadata.get("resumable"):
            if explicit is None or name in explicit or name not in saved:
                merged[name] = current[name]
        elif name not in saved:
            merged[name] = current[name]
        elif (explicit is None or name in explicit) and current[name] != saved[name]:
            conflicts.append(f"{name}: run has {saved[name]!r}, given {current[name]!r}")
    if conflicts:
        raise ConfigError("cannot resume with different training settings (start a new run, or drop these "
                          "flags):\n  " + "\n  ".join(conflicts))
    config = FitConfig(**merged)
    config.validate()
    return config

"""The toy LumiX recipe, stage by stage, as functions the scripts and tests compose.

1. :func:`train_backbone` -- stage 1: text -> color FLUX + word-table text encoder, trained
   jointly from scratch (:mod:`.stage1`), written as ``backbone.safetensors`` (BFL layout,
   loadable by :func:`lumix_core.model.flux_io.load_flux`) and ``text_encoder.safetensors``.
2. :func:`write_maps_dataset` -- scenes of the synthetic world in the release's training
   layout (``<map>/<id>_<map>.png`` + ``captions_blip2``), exactly what a real run reads.
3. :func:`prepare_cache` -- the trainer's ``prepare`` with the toy encoders plugged in at
   its Encoder boundary (:class:`.encoder.ToyEncoder`).
4. :func:`fit_adapter` -- the trainer's ``fit``: Tensor LoRA + QBA on the frozen backbone.

Seed streams of the synthetic world: stage 1 draws scenes from stream 1, stage 2 from
stream 2, the evaluation from stream 3 (:mod:`lumix_core.toy.seed_streams`), so held-out
scenes are never trained on.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..maps import RELEASE
from ..model.checkpoint import OBJECTIVE_FLOW_MATCHING, OBJECTIVE_ONE_STEP
from ..model.flux import FluxConfig
from ..model.flux_io import save_flux
from ..train.config import FitConfig, PrepareConfig
from ..train.fit import FitResult, run_fit
from ..train.prepare import run_prepare
from ..world.dataset import write_world_dataset
from .backbone import IMAGE_SIZE, SAMPLE_STEPS, make_backbone, toy_config
from .encoder import ToyEncoder
from .model import BACKBONE_FILE, TEXT_FILE
from .scoring.training_scores import training_evaluator
from .seed_streams import STAGE2_DATA_SEED
from .stage1 import Stage1Result, Stage1Settings, render_color_set, train_stage1
from .text import ToyTextEncoder
from .vae import ToyVAEDecoder

log = logging.getLogger("lumix.toy")


@dataclass(frozen=True)
class Stage2Settings:
    """Stage-2 (adapter) hyper-parameters; defaults: the shipped model.

    ``share_query`` and ``independent_maps`` select the ablation variants: QBA on/off, and a
    Tensor LoRA whose map-mixing G1 is kept block-diagonal (one independent LoRA per map).
    ``photo_conditioning_prob``: the share of scenes trained as photo decompositions (color
    pinned clean at t = 0, as the release decomposes a photo). ``rank``: 24, not the release's
    8 -- at the toy's width 8 directions are too few to carry what the maps need from the
    photo (docs/toy_model.md has the experiment). ``evaluate_every``: held-out loss of the
    last ``holdout`` scenes of the cache and ground-truth decomposition scores
    (:func:`lumix_core.toy.scoring.training_scores.training_evaluator`) into the run's curves.
    """

    #: 3200, not 800: on 800 scenes the one-step adapter's held-out loss rose by a fifth after
    #: step 2500 while its training loss kept falling; on 3200 it rises by less than a tenth (its
    #: held-out scores stayed the same within their error; docs/toy_model.md).
    scenes: int = 3200
    steps: int = 2000
    batch_size: int = 4
    lr: float = 2e-3
    warmup_steps: int = 50
    rank: int = 24
    caption_dropout: float = 0.1
    photo_conditioning_prob: float = 0.8
    data_seed: int = STAGE2_DATA_SEED
    seed: int = 0
    share_query: bool = True
    independent_maps: bool = False
    evaluate_every: int = 500
    holdout: int = 16
    objective: str = OBJECTIVE_FLOW_MATCHING
    one_step_loss: str = "latent"
    one_step_detail_weight: float = 0.0


#: The shipped one-step decomposition adapter (what ``lumix decompose`` uses): a fresh adapter trained only
#: on decompositions without caption, both loss spaces (the measured winner at 1000 steps,
#: docs/toy_model.md); lr and batch as stage 2. Rank 32 at 6000 steps beat rank 24 at 3000 and at
#: 6000 steps on every ground-truth score of 64 held-out scenes (docs/toy_model.md); rank 32 is the
#: widest whose float16 file keeps the shipped folder under 25 MB. Detail weight 20 (the normals' angular error
#: weighted towards curved surfaces and edges, :func:`lumix_core.train.one_step.detail_weights`): against 0 it
#: read the normals of as many or more held-out scenes in every set scored (docs/toy_model.md).
ONE_STEP_SETTINGS = Stage2Settings(steps=6000, rank=32, caption_dropout=1.0, photo_conditioning_prob=1.0,
                                   objective=OBJECTIVE_ONE_STEP, one_step_loss="both", one_step_detail_weight=20.0)


def train_backbone(out: "str | os.PathLike[str]", settings: Stage1Settings, *, config: Optional[FluxConfig] = None,
                   size: int = IMAGE_SIZE, on_step=None) -> Stage1Result:
    """Stage 1 into ``out/backbone.safetensors`` + ``out/text_encoder.safetensors`` (refuses to replace them)."""
    out = Path(out)
    for name in (BACKBONE_FILE, TEXT_FILE):
        if (out / name).exists():
            raise FileExistsError(f"{out / name} exists; stage 1 never replaces a trained backbone")
    data = render_color_set(settings.scenes, settings.data_seed, size)
    model = make_backbone(config or toy_config(), seed=settings.seed)
    text = ToyTextEncoder(seed=settings.seed)
    result = train_stage1(model, text, data, settings, on_step=on_step)
    save_flux(model, out / BACKBONE_FILE)
    text.save(out / TEXT_FILE)
    return result


def write_maps_dataset(root: "str | os.PathLike[str]", scenes: int, data_seed: int, size: int = IMAGE_SIZE) -> Path:
    """``scenes`` scenes of stream ``data_seed`` in the release layout (the first ``n`` scenes of a
    stream are the same for every count, so smaller sets are subsets of larger ones)."""
    write_world_dataset(root, scenes, seed=data_seed, size=size)
    return Path(root)


def prepare_cache(data_root: "str | os.PathLike[str]", cache: "str | os.PathLike[str]", text: ToyTextEncoder) -> Path:
    """The trainer's ``prepare`` with the toy encoders; fp32 cache (8-bit maps need more than bf16's 8 bits)."""
    config = PrepareConfig(data=str(data_root), cache=str(cache), maps=RELEASE.to_string(), cache_dtype="fp32")
    report = run_prepare(config, encoder=ToyEncoder(text), progress=False)
    if report.skipped:
        raise RuntimeError(f"prepare skipped scenes of a generated dataset: {report.summary()}")
    return Path(report.cache)


def fit_config(cache: "str | os.PathLike[str]", backbone: "str | os.PathLike[str]", output: "str | os.PathLike[str]",
               settings: Stage2Settings) -> FitConfig:
    """The trainer's config for a toy stage-2 run (CPU, fp32, no checkpointing of activations)."""
    s = settings
    return FitConfig(cache=str(cache), flux=str(backbone), output=str(output), steps=s.steps, batch_size=s.batch_size,
                     lr=s.lr, warmup_steps=s.warmup_steps, lr_schedule="cosine", rank=s.rank,
                     caption_dropout=s.caption_dropout, photo_conditioning_prob=s.photo_conditioning_prob,
                     seed=s.seed, precision="fp32", gradient_checkpointing=False, device="cpu",
                     checkpoint_every=s.evaluate_every, validate_every=s.evaluate_every, validation_scenes=2,
                     validation_steps=SAMPLE_STEPS, validation_guidance=1.0, share_query=s.share_query,
                     independent_maps=s.independent_maps, holdout=s.holdout, objective=s.objective,
                     one_step_loss=s.one_step_loss, one_step_detail_weight=s.one_step_detail_weight)


def fit_adapter(cache: "str | os.PathLike[str]", backbone: "str | os.PathLike[str]",
                output: "str | os.PathLike[str]", settings: Stage2Settings, on_step=None,
                text: Optional[ToyTextEncoder] = None) -> FitResult:
    """Stage 2 with the trainer's ``fit``; the adapter lands in ``output/adapter.safetensors``.
    With ``text`` (the stage-1 text encoder) every evaluation also scores held-out decompositions."""
    evaluator = None
    if text is not None and settings.evaluate_every:
        evaluator = training_evaluator(text, one_step=settings.objective == OBJECTIVE_ONE_STEP)
    return run_fit(fit_config(cache, backbone, output, settings), decoder=ToyVAEDecoder(), on_step=on_step,
                   evaluator=evaluator)

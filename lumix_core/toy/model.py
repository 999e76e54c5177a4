"""The toy LumiX model as one object: backbone + text encoder + adapter, load and sample.

Used by ``lumix demo``, the evaluations and the tests. Files of a model folder (the shipped
one is :data:`WEIGHTS_DIR`)::

    backbone.safetensors       toy FLUX (BFL key layout, config in the metadata; lumix_core.model.flux_io)
    text_encoder.safetensors   word table + positions, vocabulary in the metadata (lumix_core.toy.text)
    adapter.safetensors        LumiX adapter, release key layout (lumix_core.model.checkpoint)
    adapter_one_step.safetensors  the one-step decomposition adapter (``lumix decompose --fast``)
    model_card.json            how it was trained (written by lumix_core.toy.reproduce)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

import torch
from torch import Tensor

from ..conventions import FinishedMap, finish_maps, split_groups
from ..io.safetensors_io import CheckpointError
from ..maps import MapSet
from ..model.adapter import LumiXAdapter
from ..model.checkpoint import OBJECTIVE_ONE_STEP, ModelShape, adapter_objective, inspect_adapter, load_adapter
from ..model.flux import Flux
from ..model.flux_io import load_flux
from ..sampling.denoiser import FluxDenoiser, TextConditioning
from ..sampling.sampler import decompose_one_step
from ..train.fit import META_SHARE_QUERY
from . import vae
from .backbone import IMAGE_SIZE, SAMPLE_STEPS, TRUE_CFG, sample_maps
from .text import ToyTextEncoder

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BACKBONE_FILE = "backbone.safetensors"
TEXT_FILE = "text_encoder.safetensors"
ADAPTER_FILE = "adapter.safetensors"
ONE_STEP_ADAPTER_FILE = "adapter_one_step.safetensors"
CARD_FILE = "model_card.json"
#: ``lumix.model`` in the metadata of the files the toy writes.
MODEL_TEXT = "toy (lumix_core.toy)"
#: What to do when a file of :data:`WEIGHTS_DIR` is missing or unreadable: it came with the
#: package (not from a download), so a fresh copy of the package is the fix.
REINSTALL = ("this file ships with the package, so reinstall it: pip install --force-reinstall --no-deps "
             "lumix-intrinsics (from a git clone: git checkout -- lumix_core/toy/weights)")


T = TypeVar("T")


def _read(path: Path, load: Callable[[Path], T]) -> T:
    """``load(path)``; if a file of the shipped weights cannot be read, say to reinstall
    instead of the loaders' "download it again" (nobody downloaded it)."""
    try:
        return load(path)
    except CheckpointError as e:
        if path.resolve().parent != WEIGHTS_DIR:
            raise
        raise CheckpointError(f"{e.problem} (in {WEIGHTS_DIR})", REINSTALL) from None


@dataclass
class ToyLumiX:
    """A loaded toy model. Without an adapter it is the stage-1 text -> color model."""

    backbone: Flux
    text: ToyTextEncoder
    adapter: Optional[LumiXAdapter] = None
    share_query: bool = True
    #: A one-step decomposition adapter (:data:`~lumix_core.model.checkpoint.OBJECTIVE_ONE_STEP`):
    #: it decomposes photos in one deterministic call and cannot generate from text.
    one_step: bool = False

    def __post_init__(self) -> None:
        self.backbone.eval().requires_grad_(False)
        self.text.eval().requires_grad_(False)
        if self.adapter is not None:
            self.adapter.eval().requires_grad_(False)
            self.backbone.attach(self.adapter, share_query=self.share_query)

    @classmethod
    def load(cls, folder: "str | os.PathLike[str]" = WEIGHTS_DIR, *, adapter: "str | os.PathLike[str] | None" = None,
             share_query: Optional[bool] = None, with_adapter: bool = True) -> "ToyLumiX":
        """Load a model folder; ``adapter`` overrides the folder's adapter file. ``share_query``
        defaults to what the trainer recorded in the adapter (QBA on if it recorded nothing)."""
        folder = Path(folder)
        one_step = False
        missing = [f for f in (BACKBONE_FILE, TEXT_FILE) + ((ADAPTER_FILE,) if with_adapter and adapter is None else ())
                   if not (folder / f).is_file()]
        if missing:
            remedy = (REINSTALL if folder.resolve() == WEIGHTS_DIR
                      else "make one with python -m lumix_core.toy.reproduce")
            raise FileNotFoundError(f"{folder}: missing {', '.join(missing)}; a toy model folder holds "
                                    f"{BACKBONE_FILE}, {TEXT_FILE} and {ADAPTER_FILE} ({remedy})")
        backbone = _read(folder / BACKBONE_FILE, lambda p: load_flux(p, dtype=torch.float32))
        text = _read(folder / TEXT_FILE, ToyTextEncoder.load)
        lora = None
        if with_adapter:
            c = backbone.config
            path = Path(adapter) if adapter is not None else folder / ADAPTER_FILE
            shape = ModelShape(c.hidden_size, c.depth, c.depth_single_blocks)
            lora = _read(path, lambda p: load_adapter(p, shape, dtype=torch.float32))
            info = inspect_adapter(path)
            if share_query is None:
                share_query = info.metadata.get(META_SHARE_QUERY, "true") == "true"
            one_step = adapter_objective(info) == OBJECTIVE_ONE_STEP
        return cls(backbone, text, lora, True if share_query is None else share_query,
                   one_step=one_step)

    @staticmethod
    def card(folder: "str | os.PathLike[str]" = WEIGHTS_DIR) -> dict:
        path = Path(folder) / CARD_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    @classmethod
    def live(cls, backbone: Flux, text: ToyTextEncoder, *, one_step: bool = False) -> "ToyLumiX":
        """A view of a backbone whose adapter the trainer attached (evaluation during training):
        the adapter is used as attached and left trainable."""
        if backbone.lumix is None:
            raise ValueError("ToyLumiX.live needs a backbone with an adapter attached")
        return cls(backbone, text, one_step=one_step)

    @property
    def maps(self) -> MapSet:
        if self.adapter is not None:
            return self.adapter.maps
        attached = self.backbone.lumix
        return attached.adapter.maps if attached is not None else MapSet(("color",))

    def conditioning(self, prompts: Sequence[str]) -> TextConditioning:
        with torch.no_grad():
            txt, y = self.text.encode(list(prompts))
        return TextConditioning(txt, y)

    def sample_latents(self, prompts: Sequence[str], *, seed: int = 0, steps: int = SAMPLE_STEPS,
                       true_cfg: float = TRUE_CFG, size: int = IMAGE_SIZE,
                       color: Optional[Tensor] = None, shared_noise: bool = True) -> Tensor:
        """``[N*M, C, h, w]`` latents for one scene per prompt; ``color`` ``[N, H, W, 3]`` in [0, 1]
        pins the color map (decomposition of those images). ``shared_noise=False``: a control
        with one noise per map (see :func:`.backbone.sample_maps`)."""
        prompts = list(prompts)
        pinned = None if color is None else vae.encode(color)
        if self.one_step:
            if pinned is None:
                raise ValueError("this is a one-step decomposition adapter: it decomposes photos (give color=...) "
                                 "and cannot generate maps from text; use the multi-step adapter for that")
            return decompose_one_step(FluxDenoiser(self.backbone), pinned, self.maps, self.conditioning(prompts))
        uncond = self.conditioning([""]) if true_cfg != 1.0 else None
        return sample_maps(self.backbone, self.conditioning(prompts), self.maps, num_scenes=len(prompts), seed=seed,
                           uncond=uncond, true_cfg=true_cfg, steps=steps, size=size, pinned_color=pinned,
                           shared=shared_noise)

    def generate(self, prompts: Sequence[str], *, normal_convention: str = "opengl",
                 **kwargs) -> dict[str, FinishedMap]:
        """Finished maps (:func:`lumix_core.conventions.finish_maps`), each ``[N, H, W, 3]``."""
        latents = self.sample_latents(prompts, **kwargs)
        decoded = split_groups(vae.decode(latents), self.maps)
        return finish_maps(decoded, normal_convention=normal_convention)

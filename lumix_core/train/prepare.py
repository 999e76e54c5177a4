"""``prepare``: check a dataset, encode it once, write the cache.

Order of work, and why: (1) scan the folders and check every caption and image header --
cheap, and it reports *every* problem at once; (2) only then load the encoders (minutes,
~10 GB) and encode scene by scene. A bad scene stops the run with its message unless
``--skip-bad`` is given; skipped scenes are counted, listed in the report and recorded in
the manifest, never dropped silently.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..maps import MapSet
from .cache import CacheWriter
from .config import PrepareConfig, config_to_dict
from .crop import CropSpec, apply_crop, plan_crop
from .data import DatasetError, Problem, SceneFiles, check_scene, read_image, scan_dataset
from .encoder import Encoder

log = logging.getLogger("lumix.train")

SKIP_HINT = "\nFix these files, or pass --skip-bad to leave those scenes out (they are counted and listed)."


@dataclass
class PrepareReport:
    """What ``prepare`` did: scenes written, scenes skipped and why."""

    cache: str
    prepared: int
    skipped: list[Problem] = field(default_factory=list)

    @property
    def skipped_scenes(self) -> int:
        return len({p.scene_id for p in self.skipped})

    def summary(self) -> str:
        text = f"prepared {self.prepared} scene(s) into {self.cache}; skipped {self.skipped_scenes} scene(s)"
        if self.skipped:
            text += ":\n  " + "\n  ".join(str(p) for p in self.skipped)
        return text


def load_scene_images(scene: SceneFiles, maps: MapSet, crop: CropSpec) -> np.ndarray:
    """``[M, H, W, 3]`` float32 in [0, 1], maps in group order, one crop plan for all of them."""
    images = [read_image(scene.images[name]) for name in maps.names]
    h, w = images[0].shape[:2]
    for name, img in zip(maps.names, images):
        if img.shape[:2] != (h, w):
            raise ValueError(f"the '{name}' image is {img.shape[1]}x{img.shape[0]}, the "
                             f"'{maps.names[0]}' image is {w}x{h}")
    plan = plan_crop(w, h, crop, scene.scene_id)
    return np.stack([apply_crop(img, plan) for img in images])


def run_prepare(config: PrepareConfig, *, encoder: Optional[Encoder] = None,
                encoder_factory: Optional[Callable[[PrepareConfig], Encoder]] = None,
                progress: bool = True) -> PrepareReport:
    """Run the whole stage. ``encoder`` (tests, other hosts) replaces the ComfyUI-backed one."""
    config.validate()
    maps = MapSet.parse(config.maps)
    crop = CropSpec.parse(config.size, config.crop, config.seed)

    scenes, problems = scan_dataset(config.data, maps)
    checked: list[tuple[SceneFiles, str]] = []
    for scene in scenes:
        caption, size, scene_problems = check_scene(scene)
        if not scene_problems and size is not None:
            try:
                plan_crop(size[0], size[1], crop, scene.scene_id)
            except ValueError as e:
                scene_problems = [Problem(scene.scene_id, scene.images[maps.names[0]], str(e))]
        problems.extend(scene_problems)
        if not scene_problems:
            checked.append((scene, caption))  # type: ignore[arg-type]
    if problems and not config.skip_bad:
        raise DatasetError(problems, SKIP_HINT)
    if not checked:
        raise DatasetError(problems or [Problem("*", None, "no usable scenes")],
                           "\nNo usable scene is left, so there is nothing to encode.")

    # The target folder is checked before the encoders load (a typo should not cost minutes).
    with CacheWriter(config.cache, maps, dtype=config.cache_dtype, shard_size=config.shard_size,
                     overwrite=config.overwrite) as writer:
        if encoder is None:
            factory = encoder_factory or _comfy_encoder
            encoder = factory(config)
        iterator = checked
        if progress:
            from tqdm import tqdm

            iterator = tqdm(checked, desc="encoding", unit="scene")
        for scene, caption in iterator:
            try:
                images = load_scene_images(scene, maps, crop)
            except ValueError as e:
                bad = Problem(scene.scene_id, scene.images[maps.names[0]], str(e))
                if not config.skip_bad:
                    raise DatasetError([bad], SKIP_HINT) from None
                problems.append(bad)
                continue
            latents = encoder.encode_images(torch.from_numpy(images))
            txt, y = encoder.encode_text([caption])
            writer.add(scene.scene_id, latents, txt[0], y[0], caption)
        empty_txt, empty_y = encoder.encode_text([""])
        info = {"source": str(config.data), "crop": crop.to_dict(), "encoder": encoder.describe(),
                "prepare_config": config_to_dict(config), "skipped": [p.to_dict() for p in problems]}
        path = writer.finish(empty_txt[0], empty_y[0], info=info)
    report = PrepareReport(str(path), len(writer.records), problems)
    log.info(report.summary())
    return report


def _comfy_encoder(config: PrepareConfig) -> Encoder:
    from .comfy_host import ComfyEncoder

    return ComfyEncoder.from_files(config.comfyui, config.vae, config.clip_l, config.t5, device=config.device)

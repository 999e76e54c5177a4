"""``lumix demo``: the five maps of one prompt from the shipped toy model, on CPU, in seconds.

Why a toy demo: the real model needs FLUX.1-dev (24 GB) and the LumiX adapter; this runs on
a fresh machine with nothing but this package, with the same sampler
(:func:`lumix_core.sampling.sampler.sample_euler`, one noise draw shared by all maps of the scene),
the same map finishing (:func:`lumix_core.conventions.finish_maps`) and the same exporter
(:func:`lumix_core.io.export.save_maps`) as the ComfyUI nodes. Its vocabulary is the synthetic
world's caption grammar; other words are refused with the list of known ones.

Files (``<n>`` counts up, nothing is ever overwritten)::

    OUT/lumix_demo_<n>_00_<map>.png    one 8-bit PNG per map (64 x 64)
    OUT/lumix_demo_<n>_sheet.png       contact sheet: the maps side by side, enlarged, labelled
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..conventions import FinishedMap, conventions_metadata
from ..io.export import save_maps
from ..io.files import write_bytes_atomically
from ..io.png import encode_png
from ..train.validation import contact_sheet as labelled_sheet
from .backbone import SAMPLE_STEPS, TRUE_CFG
from .model import MODEL_TEXT, WEIGHTS_DIR, ToyLumiX

FILE_PREFIX = "lumix_demo"
DEFAULT_PROMPT = "a red sphere and a blue box on a gray floor, light from the left"


@dataclass
class DemoResult:
    files: list[Path]
    sheet: Path
    seconds: float
    normal_deviation: float  # mean | |n| - 1 | of the raw normal map, before renormalisation


def contact_sheet(maps: dict[str, FinishedMap], scale: int = 4) -> np.ndarray:
    """uint8 ``[H, W, 3]``: the maps of scene 0 left to right, enlarged ``scale`` x (nearest
    neighbour, so the pixels stay the model's), each named above."""
    return labelled_sheet([torch.stack([m.image[0] for m in maps.values()])], labels=list(maps), scale=scale)


def run_demo(prompt: str, out: "str | os.PathLike[str]", *, seed: int = 0, steps: int = SAMPLE_STEPS,
             true_cfg: float = TRUE_CFG, weights: "str | os.PathLike[str]" = WEIGHTS_DIR,
             normal_convention: str = "opengl", model: Optional[ToyLumiX] = None) -> DemoResult:
    """Generate the maps of ``prompt`` and write them into ``out``; raises
    :class:`lumix_core.toy.text.PromptError` for words outside the vocabulary."""
    start = time.perf_counter()
    model = model or ToyLumiX.load(weights)
    model.text.check_prompt(prompt)  # before any file or folder is made
    with torch.inference_mode():
        maps = model.generate([prompt], seed=seed, steps=steps, true_cfg=true_cfg, normal_convention=normal_convention)
    out = Path(out)
    saved = save_maps({k: m.image for k, m in maps.items()}, out, FILE_PREFIX, prompt=prompt, seed=seed,
                      formats=("png8",), conventions=conventions_metadata(normal_convention),
                      extra_text={"lumix.model": MODEL_TEXT})
    stem = saved[0].filename.split("_00_")[0]  # lumix_demo_<counter>
    sheet_path = out / f"{stem}_sheet.png"
    data = encode_png(contact_sheet(maps), {"lumix.prompt": prompt, "lumix.seed": str(seed),
                                            "lumix.maps": ",".join(maps)})
    try:
        write_bytes_atomically(sheet_path, data, overwrite=False)
    except OSError:
        for s in saved:  # this run's own new files: a failed run leaves none of them behind
            Path(s.path).unlink(missing_ok=True)
        raise
    return DemoResult([Path(s.path) for s in saved], sheet_path, time.perf_counter() - start,
                      float(maps["normal"].deviation.mean()))

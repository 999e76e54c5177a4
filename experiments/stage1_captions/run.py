"""Does a stage-1 backbone follow its caption's light and colour words? (~3 min on one core)

    python experiments/stage1_captions/run.py [--backbone DIR] [--colour-seeds N]   # default: the shipped stage 1

The light-following check of :func:`lumix_core.toy.scoring.caption_checks.caption_following`, applied to a stage-1
backbone's own color images (text -> color, no adapter; 16 seeds, same prompts, true CFG, 24 steps):
the share of seeds where "light from the left" makes the left half of the color image brighter than
"light from the right" by >= 5/255, and the mean difference; and, roughly, the colour check on the
color images of the single-object prompts (``--colour-seeds`` seeds each, default 2 as in the
evaluation), with what was drawn for each named colour. What an adapter can inherit: a stage 1 that
does not follow a word gives the adapters nothing to follow it with (figures:
experiments/stage1_captions/README.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from lumix_core.maps import MapSet
from lumix_core.model.flux_io import load_flux
from lumix_core.sampling.denoiser import TextConditioning
from lumix_core.toy import vae
from lumix_core.toy.backbone import TRUE_CFG, sample_maps
from lumix_core.toy.model import BACKBONE_FILE, TEXT_FILE, WEIGHTS_DIR
from lumix_core.toy.scoring.light_check import LIGHT_PROMPT, LIGHT_SEED_OFFSET, VISIBLE_STEP, left_half_mean
from lumix_core.toy.scoring.object_checks import color_prompts, dominant_color
from lumix_core.toy.text import ToyTextEncoder

COLOR_ONLY = MapSet(("color",))


def _color_image(model, text: ToyTextEncoder, prompt: str, seed: int) -> torch.Tensor:
    def conditioning(p: str) -> TextConditioning:
        return TextConditioning(*text(text.tokenize([p])))

    latents = sample_maps(model, conditioning(prompt), COLOR_ONLY, num_scenes=1, seed=seed, uncond=conditioning(""),
                          true_cfg=TRUE_CFG)
    return vae.decode_display(latents)[0]


def color_following(model, text: ToyTextEncoder, seeds: int = 2) -> dict:
    """:func:`caption_following`'s colour prompts on the color image itself (shading included, so
    only a rough reading): is the named colour the dominant saturated one? Also, per named colour,
    how often each colour was the dominant one (``drawn``)."""
    hits, drawn = [], {}
    for seed in range(seeds):
        for i, (color, prompt) in enumerate(color_prompts()):
            got = dominant_color(_color_image(model, text, prompt, 1000 * seed + i))
            hits.append(float(got == color))
            counts = drawn.setdefault(color, {})
            counts[str(got)] = counts.get(str(got), 0) + 1
    return {"color_following": float(np.mean(hits)), "color_prompts": float(len(hits)), "drawn": drawn}


def light_following(model, text: ToyTextEncoder, seeds: int = 16) -> dict[str, float]:
    diffs = []
    for seed in range(seeds):
        halves = []
        for side in ("the left", "the right"):
            image = _color_image(model, text, LIGHT_PROMPT + side, LIGHT_SEED_OFFSET + seed)
            halves.append(left_half_mean(image))
        diffs.append(halves[0] - halves[1])
    d = np.array(diffs)
    return {"light_following": float(np.mean(d >= VISIBLE_STEP)), "left_minus_right_8bit": float(255 * d.mean()),
            "sem_8bit": float(255 * d.std(ddof=1) / np.sqrt(len(d)))}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python experiments/stage1_captions/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default=str(WEIGHTS_DIR),
                    help=f"folder with a stage-1 {BACKBONE_FILE} and {TEXT_FILE} (default: the shipped ones)")
    ap.add_argument("--colour-seeds", type=int, default=2,
                    help="seeds per colour prompt (default 2, as in the evaluation; 4 gives 8 images per colour)")
    args = ap.parse_args()
    if args.colour_seeds < 1:
        ap.error("--colour-seeds must be >= 1")
    torch.set_num_threads(1)
    folder = Path(args.backbone)
    model, text = load_flux(folder / BACKBONE_FILE), ToyTextEncoder.load(folder / TEXT_FILE)
    with torch.no_grad():
        model.eval()
        print(json.dumps({**light_following(model, text), **color_following(model, text, args.colour_seeds)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

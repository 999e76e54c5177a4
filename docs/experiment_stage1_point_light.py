"""Does a stage 1 follow "light from the left / right" once the world shows it? (~25 min on one core)

    python docs/experiment_stage1_point_light.py --out DIR      # trains a stage 1 on the point-light world
    python docs/experiment_stage1_point_light.py --shipped      # scores the shipped stage 1 only

The light-following check of :func:`lumix_core.toy.evaluate.caption_following`, applied to a stage-1
backbone's own color images (text -> color, no adapter; 16 seeds, same prompts, true CFG, 24 steps):
the share of seeds where "light from the left" makes the left half of the color image brighter than
"light from the right" by >= 5/255, and the mean difference; and, roughly, the colour check on the
color images of the 16 single-object prompts (2 seeds). ``--out`` trains the recipe's stage 1
(:class:`lumix_core.toy.stage1.Stage1Settings`, unchanged) on scenes whose main light is a point light
4 units from the camera target (:func:`experiment_world_limits.with_point_main_light`, the candidate
world fix), by swapping the scene sampler stage 1 renders from; nothing in the package changes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiment_world_limits import with_point_main_light  # noqa: E402

from lumix_core.maps import MapSet  # noqa: E402
from lumix_core.model.flux_io import load_flux, save_flux  # noqa: E402
from lumix_core.sampling.denoiser import TextConditioning  # noqa: E402
from lumix_core.toy import stage1, vae  # noqa: E402
from lumix_core.toy.backbone import IMAGE_SIZE, TRUE_CFG, make_backbone, sample_maps, toy_config  # noqa: E402
from lumix_core.toy.evaluate import (LIGHT_PROMPT, VISIBLE_STEP, color_prompts, dominant_color,  # noqa: E402
                                     left_half_mean)
from lumix_core.toy.model import BACKBONE_FILE, TEXT_FILE, WEIGHTS_DIR  # noqa: E402
from lumix_core.toy.text import ToyTextEncoder  # noqa: E402
from lumix_core.world.scene import sample_scene  # noqa: E402

COLOR_ONLY = MapSet(("color",))


def _color_image(model, text: ToyTextEncoder, prompt: str, seed: int) -> torch.Tensor:
    def conditioning(p: str) -> TextConditioning:
        return TextConditioning(*text(text.tokenize([p])))

    latents = sample_maps(model, conditioning(prompt), COLOR_ONLY, num_scenes=1, seed=seed, uncond=conditioning(""),
                          true_cfg=TRUE_CFG)
    return vae.decode_display(latents)[0]


def color_following(model, text: ToyTextEncoder) -> dict[str, float]:
    """:func:`caption_following`'s colour prompts on the color image itself (shading included, so
    only a rough reading): is the named colour the dominant saturated one?"""
    hits = [float(dominant_color(_color_image(model, text, prompt, 1000 * seed + i)) == color)
            for seed in range(2) for i, (color, prompt) in enumerate(color_prompts())]
    return {"color_following": float(np.mean(hits)), "color_prompts": float(len(hits))}


def light_following(model, text: ToyTextEncoder, seeds: int = 16) -> dict[str, float]:
    diffs = []
    for seed in range(seeds):
        halves = []
        for side in ("the left", "the right"):
            image = _color_image(model, text, LIGHT_PROMPT + side, 2000 + seed)
            halves.append(left_half_mean(image))
        diffs.append(halves[0] - halves[1])
    d = np.array(diffs)
    return {"light_following": float(np.mean(d >= VISIBLE_STEP)), "left_minus_right_8bit": float(255 * d.mean()),
            "sem_8bit": float(255 * d.std(ddof=1) / np.sqrt(len(d)))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", help="new folder for the point-light stage 1 (backbone + text encoder)")
    group.add_argument("--shipped", action="store_true", help="score the shipped stage 1 only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.shipped:
        model, text = load_flux(WEIGHTS_DIR / BACKBONE_FILE), ToyTextEncoder.load(WEIGHTS_DIR / TEXT_FILE)
    else:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=False)
        stage1.sample_scene = lambda seed: with_point_main_light(sample_scene(seed), 4.0)
        settings = stage1.Stage1Settings()
        start = time.perf_counter()
        data = stage1.render_color_set(settings.scenes, settings.data_seed, IMAGE_SIZE)
        model, text = make_backbone(toy_config(), seed=settings.seed), ToyTextEncoder()
        stage1.train_stage1(model, text, data, settings)
        save_flux(model, out / BACKBONE_FILE)
        text.save(out / TEXT_FILE)
        print(f"stage 1: {time.perf_counter() - start:.0f} s")
    with torch.no_grad():
        model.eval()
        print(json.dumps({**light_following(model, text), **color_following(model, text)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

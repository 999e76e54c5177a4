"""Which targets can the toy lab reach at all? Two checks on the world's own ground truth.

    python experiments/world_limits/run.py [--scenes 64] [--fit-scenes 128]

No model is involved: both checks ask what a *perfect* toy model could score.

1. **The codec floor of albedo.** Every true map goes through a linear codec of 16 numbers per
   4 x 4 RGB cell (FLUX's latent geometry at the toy's cell size) and back, and is scored like a
   prediction. Codecs: the shipped DCT "VAE" (:mod:`lumix_core.toy.vae`); the best linear codec
   for all five maps (PCA of the cells of ``--fit-scenes`` training scenes, uncentred like the
   DCT one); PCA fitted on albedo cells only (the best any 16-number linear codec can do for
   albedo); and PCA with more numbers per cell (more latent channels than FLUX has).
   The target is albedo si-MSE <= half of "color as albedo".
2. **The light-following target in the world's truth.** The held-out scenes whose main light
   comes from the left or right, each rendered again with that light mirrored
   (:func:`lumix_core.world.scene.mirror_main_light`): does "from the left" brighten the left
   half of the irradiance by >= 5/255 (the target: in >= 80 % of scenes)? For the world as it
   is (the main light a point light :data:`~lumix_core.world.scene.MAIN_LIGHT_DISTANCE` from the
   camera target), for a directional main light (same direction and the same irradiance at
   the target) and with the lamp nearer or farther.

Prints markdown tables (results: experiments/world_limits/README.md).
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from lumix_core.toy import vae
from lumix_core.toy.recipe import Stage2Settings
from lumix_core.toy.scoring.held_out import held_out_scenes, stream_scenes, truth_of
from lumix_core.toy.scoring.light_check import left_half_mean, light_scores, mirrored_light_pairs
from lumix_core.world.metrics import evaluate_maps
from lumix_core.world.scene import MAIN_LIGHT_DISTANCE, Light, SceneSpec, direction_to_light, main_light

MAPS = ("albedo", "irradiance", "color", "depth", "normal")
CELL = vae.FACTOR * vae.FACTOR * vae.IMAGE_CHANNELS  # 48 values per 4 x 4 RGB cell


def cells(image: torch.Tensor) -> torch.Tensor:
    """``[H, W, 3]`` in [0, 1] -> ``[cells, 48]`` in [-1, 1] (the toy VAE's cell layout)."""
    return F.pixel_unshuffle(image.permute(2, 0, 1)[None] * 2 - 1, vae.FACTOR)[0].reshape(CELL, -1).T


def image(c: torch.Tensor, h: int, w: int) -> torch.Tensor:
    out = F.pixel_shuffle(c.T.reshape(1, CELL, h // vae.FACTOR, w // vae.FACTOR), vae.FACTOR)[0]
    return ((out.permute(1, 2, 0) + 1) / 2).clamp(0, 1)


def pca(rows: torch.Tensor, k: int) -> torch.Tensor:
    """``[k, 48]`` orthonormal rows: the best rank-k linear projection of ``rows`` (no offset)."""
    return torch.linalg.svd(rows.double(), full_matrices=False)[2][:k].float()


def codec_floor(held: list, fit_scenes: int) -> None:
    train = stream_scenes(Stage2Settings().data_seed, fit_scenes, 64)
    x = {m: torch.cat([cells(torch.from_numpy(r.encode()[m])) for r in train]) for m in MAPS}
    every = torch.cat([x[m] for m in MAPS])
    codecs = {"DCT, 16 per cell (shipped)": vae.basis(), "PCA of all maps, 16 per cell": pca(every, 16),
              "PCA of albedo only, 16 per cell (best linear for albedo)": pca(x["albedo"], 16),
              **{f"PCA of all maps, {k} per cell": pca(every, k) for k in (20, 24, 32)}}
    color_as_albedo = np.mean([evaluate_maps({"albedo": torch.from_numpy(r.encode()["color"])},
                                             truth_of(r))["albedo_si_mse"] for r in held])
    print(f"\n### Codec floor ({len(held)} held-out scenes; target albedo si-MSE <= {color_as_albedo / 2:.4f}, "
          f"half of color-as-albedo {color_as_albedo:.4f})\n")
    print("| codec | albedo si-MSE | irradiance si-MSE | normal (deg) | depth AbsRel |\n|---|---|---|---|---|")
    for name, basis in codecs.items():
        rows = []
        for r in held:
            maps = {k: torch.from_numpy(v) for k, v in r.encode().items()}
            rows.append(evaluate_maps({k: image(cells(v) @ basis.T @ basis, *v.shape[:2]) for k, v in maps.items()},
                                      truth_of(r)))
        mean = {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}
        print(f"| {name} | {mean['albedo_si_mse']:.4f} | {mean['irradiance_si_mse']:.5f} | "
              f"{mean['normal_angular_error_deg']:.2f} | {mean['depth_abs_rel']:.4f} |")


def with_main_light_at(spec: SceneSpec, distance: "float | None") -> SceneSpec:
    """The main light moved along its direction from the camera target: a point light ``distance``
    from the target, or directional for ``None``; its irradiance at the target stays the same."""
    light = main_light(spec)
    direction = direction_to_light(light, spec.camera)
    if distance is None:
        moved = Light("directional", tuple(float(v) for v in direction), light.color, light.intensity)
    else:
        target = np.asarray(spec.camera.target, dtype=np.float64)
        moved = Light("point", tuple(float(v) for v in target + distance * direction), light.color, light.intensity)
    return dataclasses.replace(spec, lights=tuple(moved if l is light else l for l in spec.lights))


def light_check(count: int) -> None:
    variants = {"directional main light": lambda s: with_main_light_at(s, None),
                f"point main light at {MAIN_LIGHT_DISTANCE:g} units (the world as shipped)": lambda s: s,
                **{f"point main light at {d:g} units": (lambda s, d=d: with_main_light_at(s, d)) for d in (3.0, 5.0)}}
    print(f"\n### Light following in the truth (first {count} held-out scenes lit from the left or right, "
          "main light mirrored)\n")
    print("| world | mean left-half difference (8-bit) | share >= 5/255 | clipped irradiance pixels |\n"
          "|---|---|---|---|")
    for name, make in variants.items():
        pairs = mirrored_light_pairs(count, make)
        scores = light_scores([left_half_mean(left) - left_half_mean(right) for left, right in pairs])
        clipped = np.mean([np.mean(irradiance >= 254.5 / 255) for pair in pairs for irradiance in pair])
        print(f"| {name} | {scores['light_left_minus_right']:+.1f} ± {scores['light_left_minus_right_sem']:.1f} | "
              f"{scores['light_following']:.2f} | {clipped:.3f} |")


def main() -> int:
    ap = argparse.ArgumentParser(prog="python experiments/world_limits/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=64, help="held-out scenes for the codec floor")
    ap.add_argument("--fit-scenes", type=int, default=128, help="training scenes the PCA codecs are fitted on")
    ap.add_argument("--light-scenes", type=int, default=32, help="left/right-lit held-out scenes for the light check")
    args = ap.parse_args()
    torch.set_num_threads(1)
    codec_floor(held_out_scenes(args.scenes), args.fit_scenes)
    light_check(args.light_scenes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

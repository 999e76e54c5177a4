"""Do one-step adapters draw the world's own spheres and boxes? The shape check on true renders.

    python experiments/object_normals/run.py ADAPTER [ADAPTER ...] [--names A,B] [--scan 240] [--fov LO,HI]
        [--figure FILE.png]

Each adapter (a one-step adapter file on the shipped backbone) decomposes the held-out renders
with one flat, saturated object (found among the first ``--scan`` scenes of the evaluation's
stream); the shape check (:func:`lumix_core.toy.shape_check.recognised_shape`) then names the object in its maps.
The truth scores 1.0 (tests/test_toy_shape_check.py), so a miss is the adapter's. Prints, per
adapter and true shape, the share named right and the mean angle of the object's normals to each
shape model. ``--figure``: six sphere scenes, columns input | true normal | true normal through
the toy VAE | each adapter's normal. ``--fov 19,27.5``: the same scenes seen through a narrower
lens (the world draws its cameras' field of view from :data:`lumix_core.world.scene.FOV_RANGE_DEG`,
38-55 degrees), so every object is about twice as large in the frame. Results: experiments/object_normals/README.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import lumix_core.world.scene as world_scene
from lumix_core.io.files import write_bytes_atomically
from lumix_core.io.png import encode_png
from lumix_core.toy import vae
from lumix_core.toy.model import WEIGHTS_DIR, ToyLumiX
from lumix_core.toy.scoring.object_checks import one_object_scenes
from lumix_core.toy.shape_check import better_fit, object_mask, shape_residuals
from lumix_core.train.validation import contact_sheet


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python experiments/object_normals/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("adapters", nargs="+", help="one-step adapter files (run on the shipped backbone)")
    ap.add_argument("--scan", type=int, default=240, help="held-out scenes to search (default %(default)s)")
    ap.add_argument("--names",
                    help="comma-separated names of the adapters for the table and figure (default: file names)")
    ap.add_argument("--fov", help="LO,HI: the cameras' field-of-view range in degrees instead of the world's")
    ap.add_argument("--figure", help="write the sphere figure here (refuses to overwrite)")
    args = ap.parse_args(argv)
    if args.fov:
        try:
            lo, hi = (float(v) for v in args.fov.split(","))
        except ValueError:
            print(f"--fov takes two angles in degrees, LO,HI (e.g. 19,27.5), got '{args.fov}'", file=sys.stderr)
            return 2
        world_scene.FOV_RANGE_DEG = (lo, hi)  # read by the scene sampler at every draw
    names = args.names.split(",") if args.names else [Path(p).stem for p in args.adapters]
    if len(names) != len(args.adapters):
        print(f"--names gives {len(names)} names for {len(args.adapters)} adapters", file=sys.stderr)
        return 2
    if args.figure and Path(args.figure).exists():
        print(f"{args.figure} exists; choose a new --figure path (nothing is overwritten)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    scenes = [(r.spec.objects[0].material.colors[0], r.spec.objects[0].shape, r.encode())
              for r in one_object_scenes(args.scan)]
    color = torch.stack([torch.from_numpy(maps["color"]) for _, _, maps in scenes])
    spheres = [n for n, (_, shape, _) in enumerate(scenes) if shape == "sphere"][:6]
    columns = [color[spheres], torch.stack([torch.from_numpy(scenes[n][2]["normal"]) for n in spheres])]
    columns.append(vae.round_trip(columns[1]))
    labels = ["input", "true normal", "through the VAE"]
    print("| adapter | shape | scenes | named right | to sphere model (deg) | to 3 faces (deg) |\n"
          "|---|---|---|---|---|---|")
    for path, name in zip(args.adapters, names):
        model = ToyLumiX.load(WEIGHTS_DIR, adapter=path)
        if not model.one_step:
            print(f"{path} is not a one-step adapter", file=sys.stderr)
            return 2
        maps = model.generate([""] * len(scenes), color=color)
        albedo, normal = maps["albedo"].image, maps["normal"].image
        for shape in ("sphere", "box"):
            idx = [n for n, s in enumerate(scenes) if s[1] == shape]
            res = [shape_residuals(m, normal[n]) for n in idx
                   if (m := object_mask(albedo[n], scenes[n][0])) is not None]
            hits = [better_fit(r) == shape for r in res]  # an object not drawn at all is a miss
            print(f"| {name} | {shape} | {len(idx)} | {sum(hits)} | "
                  f"{np.mean([r['sphere'] for r in res]):.1f} | {np.mean([r['box'] for r in res]):.1f} |")
        columns.append(normal[spheres])
        labels.append(name)
    if args.figure:
        rows = [torch.stack([c[i].float() for c in columns]) for i in range(len(spheres))]
        sheet = contact_sheet(rows, labels=labels, scale=3)
        write_bytes_atomically(Path(args.figure), encode_png(sheet), overwrite=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Make docs/images/relight_example.png: maps of a synthetic scene relit by lumix_core.finish.relight.

The maps come from the synthetic renderer (ground truth, no model involved), so the picture
shows what LumiX Relight does with coherent maps:

    python tools/make_relight_figure.py [--seed 11] [--size 256] [--out docs/images/relight_example.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lumix_core.finish.relight import Light, relight
from lumix_core.io.files import write_bytes_atomically
from lumix_core.io.png import encode_png
from lumix_core.world.render import render
from lumix_core.world.scene import sample_scene

ROOT = Path(__file__).resolve().parents[1]
LIGHTS = (("from the left, warm", Light(180.0, 20.0, (1.0, 0.8, 0.6), 1.5, 0.08)),
          ("from the top right, cool", Light(45.0, 25.0, (0.7, 0.85, 1.0), 1.5, 0.08)))


def figure(seed: int, size: int) -> tuple[np.ndarray, str]:
    result = render(sample_scene(seed), size)
    maps = {k: torch.from_numpy(v)[None] for k, v in result.encode().items()}
    tiles = [maps["color"], maps["albedo"], maps["normal"], maps["depth"]]
    for _, light in LIGHTS:
        tiles.append(relight(maps["albedo"], maps["normal"], light, depth=maps["depth"][..., 0], falloff=0.5))
    row = torch.cat([t[0] for t in tiles], dim=1).clamp(0, 1)
    return (row.numpy() * 255 + 0.5).astype(np.uint8), result.caption


def main() -> None:
    ap = argparse.ArgumentParser(prog="python tools/make_relight_figure.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "relight_example.png"))
    a = ap.parse_args()
    image, caption = figure(a.seed, a.size)
    labels = "color | albedo | normal | depth | " + " | ".join(f"relit {name}" for name, _ in LIGHTS)
    write_bytes_atomically(a.out, encode_png(image, text={"Description": f"{caption}: {labels}"}))
    print(f"wrote {a.out}: {caption}\n{labels}")


if __name__ == "__main__":
    main()

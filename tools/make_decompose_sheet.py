"""Make docs/images/decompose_sheet.png: ``lumix decompose`` on held-out renders, next to their truth.

    python tools/make_decompose_sheet.py [--weights DIR] [--out docs/images/decompose_sheet.png]

Rows: held-out scenes of the synthetic world (seed stream 3, never trained on). Columns: the
input color image, the four decomposed maps (color pinned, no caption, as ``lumix
decompose`` runs, 24 steps), the same four from the one-step adapter (``lumix decompose
--fast``, when the folder has one), then the four maps rendered by the world (the truth).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lumix_core.io.files import write_bytes_atomically
from lumix_core.io.png import encode_png
from lumix_core.toy.decompose import decompose_photo, load_model
from lumix_core.toy.model import ONE_STEP_ADAPTER_FILE, WEIGHTS_DIR, ToyLumiX
from lumix_core.toy.scoring.held_out import held_out_scenes
from lumix_core.train.validation import contact_sheet

MAPS = ("albedo", "irradiance", "depth", "normal")
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(prog="python tools/make_decompose_sheet.py", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(WEIGHTS_DIR))
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "decompose_sheet.png"))
    ap.add_argument("--scenes", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = ToyLumiX.load(args.weights)
    fast = load_model(args.weights, fast=True) if (Path(args.weights) / ONE_STEP_ADAPTER_FILE).is_file() else None
    rows = []
    for r in held_out_scenes(args.scenes):
        truth = {k: torch.from_numpy(v) for k, v in r.encode().items()}
        pred = decompose_photo(model, truth["color"])
        quick = decompose_photo(fast, truth["color"]) if fast is not None else {}
        rows.append(torch.stack([truth["color"]] + [pred[m] for m in MAPS] + [quick[m] for m in MAPS if quick]
                                + [truth[m] for m in MAPS]))
    labels = (["input"] + list(MAPS) + ([f"fast {m}" for m in MAPS] if fast is not None else [])
              + [f"true {m}" for m in MAPS])
    sheet = contact_sheet(rows, labels=labels, scale=2)
    write_bytes_atomically(args.out, encode_png(sheet, {"lumix.made_by": "tools/make_decompose_sheet.py",
                                                        "lumix.weights": str(args.weights)}))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

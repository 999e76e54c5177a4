"""Shots, not stills: per-frame decomposition against shot mode, in the synthetic world.

    python experiments/shots/run.py [--scenes 6] [--frames 24] [--out experiments/shots]

Runs :func:`lumix_core.toy.shot_eval.shot_table` (the table ``python -m lumix_core.toy.shot_eval``
prints) and writes, into ``--out``: ``results.csv`` (one row per move and mode), ``flicker.png``
(albedo and normal flicker per frame transition of the lamp sweeps, per-frame vs shot mode) and
``strip.png`` (frames 0, 1/3, 2/3 and last of the first lamp sweep: color, then albedo and
normals per-frame and in shot mode). Prints the markdown table.
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from lumix_core.io.files import write_bytes_atomically, write_text_atomically
from lumix_core.toy.decompose import load_model
from lumix_core.toy.shot_eval import COLUMNS, ShotTable, markdown, shot_table

PANEL = (420, 230)
MARGIN = (56, 24, 12, 34)  # left, top, right, bottom
COLOURS = {"per-frame": (200, 70, 30), "shot": (30, 90, 180), "shot, camera moving": (120, 160, 120)}


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _panel(title: str, curves: dict[str, np.ndarray], unit: str) -> Image.Image:
    """One line chart of ``{mode: y per transition}``; the y axis starts at 0."""
    w, h = PANEL
    left, top, right, bottom = MARGIN
    img = Image.new("RGB", PANEL, "white")
    d = ImageDraw.Draw(img)
    d.text((left, 4), title, fill=(0, 0, 0))
    y1 = max(float(v.max()) for v in curves.values()) * 1.1 or 1.0
    n = max(len(v) for v in curves.values())
    pw, ph = w - left - right, h - top - bottom

    def px(x: float, y: float) -> tuple[float, float]:
        return left + x / max(n - 1, 1) * pw, top + (1.0 - y / y1) * ph

    d.rectangle([left, top, left + pw, top + ph], outline=(160, 160, 160))
    for frac in (0.0, 0.5, 1.0):
        d.text((2, px(0, frac * y1)[1] - 5), f"{frac * y1:.3g}", fill=(60, 60, 60))
        d.text((px(frac * (n - 1), 0)[0] - 6, top + ph + 4), f"{1 + frac * (n - 1):.0f}", fill=(60, 60, 60))
    d.text((left + pw - 150, top + ph + 18), f"frame transition ({unit})", fill=(60, 60, 60))
    for k, (mode, y) in enumerate(curves.items()):
        pts = [px(i, float(v)) for i, v in enumerate(y)]
        d.line(pts, fill=COLOURS.get(mode, (0, 0, 0)), width=2)
        d.text((left + 8, top + 6 + 12 * k), mode, fill=COLOURS.get(mode, (0, 0, 0)))
    return img


def flicker_png(table: ShotTable) -> bytes:
    modes = [m for m in COLOURS if (m, "albedo") in table.curves]
    panels = [_panel("albedo flicker, lamp sweeps (linear RGB)", {m: table.curves[(m, "albedo")] for m in modes},
                     "mean |change|"),
              _panel("normal flicker, lamp sweeps (degrees)", {m: table.curves[(m, "normal")] for m in modes},
                     "mean angle")]
    sheet = Image.new("RGB", (PANEL[0] * 2, PANEL[1]), "white")
    for i, p in enumerate(panels):
        sheet.paste(p, (i * PANEL[0], 0))
    return _png(sheet)


def strip_png(table: ShotTable) -> bytes:
    """Rows: color, albedo per-frame, albedo shot, normal per-frame, normal shot; four frames across."""
    ex = table.example
    frames = ex["per-frame"]["color"].shape[0]
    picks = sorted({0, frames // 3, 2 * frames // 3, frames - 1})
    rows = [ex["per-frame"]["color"], ex["per-frame"]["albedo"], ex["shot"]["albedo"], ex["per-frame"]["normal"],
            ex["shot"]["normal"]]
    grid = torch.cat([torch.cat([r[i] for i in picks], dim=1) for r in rows], dim=0)
    pixels = (grid.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    img = Image.fromarray(pixels).resize((pixels.shape[1] * 2, pixels.shape[0] * 2), Image.NEAREST)
    labelled = Image.new("RGB", (img.width + 120, img.height), "white")
    labelled.paste(img, (120, 0))
    d = ImageDraw.Draw(labelled)
    for k, label in enumerate(("color", "albedo, per-frame", "albedo, shot", "normal, per-frame", "normal, shot")):
        d.text((4, k * img.height // len(rows) + 8), label, fill=(0, 0, 0))
    return _png(labelled)


def results_csv(table: ShotTable) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["move", "mode", *COLUMNS])
    for (move, mode), r in table.rows.items():
        writer.writerow([move, mode, *(f"{r[c]:.6g}" if c in r else "" for c in COLUMNS)])
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(prog="python experiments/shots/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=6, help="held-out scenes per move (default %(default)s)")
    ap.add_argument("--frames", type=int, default=24, help="frames per shot (default %(default)s)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent), help="folder for the CSV and figures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    table = shot_table(load_model(fast=True), args.scenes, args.frames)
    out = Path(args.out)
    write_text_atomically(out / "results.csv", results_csv(table))
    write_bytes_atomically(out / "flicker.png", flicker_png(table))
    write_bytes_atomically(out / "strip.png", strip_png(table))
    print(markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

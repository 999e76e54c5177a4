"""Learning curves of a run folder: ``curves.csv`` and ``curves.png``, rebuilt at each evaluation.

Why rebuilt from the logs instead of appended: ``metrics.jsonl`` (one line per step) and
``evaluations.jsonl`` (one line per evaluation) are the run's record, trimmed to the
checkpoint on ``--resume``; the CSV and the plot are views of them, so a resumed run's
curves never show steps the checkpoint does not contain.

``curves.csv``: one row per evaluation: ``step``, ``train_loss`` (mean step loss since the
previous evaluation), then every evaluation score (held-out loss, and whatever an evaluator
returned, e.g. the toy's ground-truth metrics). ``curves.png``: one panel per evaluation
score, after the training loss drawn per step (light) and smoothed (dark). Drawn with Pillow alone, so a
headless trainer needs no plotting library.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..io.files import write_bytes_atomically, write_text_atomically

METRICS = "metrics.jsonl"
EVALUATIONS = "evaluations.jsonl"
CURVES_CSV = "curves.csv"
CURVES_PNG = "curves.png"

_PANEL = (360, 200)  # width, height of one panel in pixels
_MARGIN = (52, 22, 12, 28)  # left, top, right, bottom


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines log (unreadable lines -- e.g. cut by a crash -- are skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            out.append(record)
    return out


def curve_rows(steps: Sequence[dict], evaluations: Sequence[dict]) -> tuple[list[str], list[dict]]:
    """``(columns, rows)`` of curves.csv from the two logs."""
    keys = sorted({k for e in evaluations for k in e if k != "step" and isinstance(e[k], (int, float))})
    rows, previous = [], 0
    for e in sorted(evaluations, key=lambda r: r["step"]):
        window = [s["loss"] for s in steps if previous < s["step"] <= e["step"]]
        rows.append({"step": e["step"], "train_loss": float(np.mean(window)) if window else float("nan"),
                     **{k: e.get(k, float("nan")) for k in keys}})
        previous = e["step"]
    return ["step", "train_loss", *keys], rows


def _smooth(values: np.ndarray, span: int) -> np.ndarray:
    if len(values) < 3:
        return values
    kernel = np.ones(min(span, len(values))) / min(span, len(values))
    padded = np.pad(values, (len(kernel) // 2, len(kernel) - 1 - len(kernel) // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def _panel(title: str, series: Sequence[tuple[np.ndarray, np.ndarray, tuple[int, int, int], bool]]) -> Image.Image:
    """One line chart: ``series`` = (x, y, colour, draw points) each; axes span all of them."""
    w, h = _PANEL
    left, top, right, bottom = _MARGIN
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 4), title, fill=(0, 0, 0))
    xs = np.concatenate([s[0] for s in series if len(s[0])]) if any(len(s[0]) for s in series) else np.zeros(0)
    ys = np.concatenate([s[1] for s in series if len(s[1])]) if xs.size else np.zeros(0)
    finite = np.isfinite(ys)
    if not finite.any():
        d.text((left, h // 2), "no data yet", fill=(120, 120, 120))
        return img
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = float(ys[finite].min()), float(ys[finite].max())
    if x1 <= x0:
        x1 = x0 + 1.0
    if y1 <= y0:
        y0, y1 = y0 - 0.5 * abs(y0) - 1e-6, y1 + 0.5 * abs(y1) + 1e-6
    pw, ph = w - left - right, h - top - bottom

    def px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * pw, top + (1.0 - (y - y0) / (y1 - y0)) * ph

    d.rectangle([left, top, left + pw, top + ph], outline=(160, 160, 160))
    for frac in (0.0, 0.5, 1.0):
        y = y0 + frac * (y1 - y0)
        d.text((2, px(x0, y)[1] - 5), _fmt(y), fill=(60, 60, 60))
        x = x0 + frac * (x1 - x0)
        label = f"{x:.0f}"
        d.text((px(x, y0)[0] - 3 * len(label), top + ph + 4), label, fill=(60, 60, 60))
    d.text((left + pw - 24, top + ph + 14), "step", fill=(60, 60, 60))
    for x, y, colour, points in series:
        keep = np.isfinite(y)
        pts = [px(float(a), float(b)) for a, b in zip(x[keep], y[keep])]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2 if points else 1)
        if points:
            for a, b in pts:
                d.ellipse([a - 2.5, b - 2.5, a + 2.5, b + 2.5], fill=colour)
    return img


def curves_png(steps: Sequence[dict], columns: Sequence[str], rows: Sequence[dict]) -> bytes:
    """PNG bytes: the training loss per step, then one panel per evaluation column."""
    panels = []
    if steps:
        x = np.array([s["step"] for s in steps], dtype=np.float64)
        y = np.array([s["loss"] for s in steps], dtype=np.float64)
        panels.append(_panel("training loss (per step; dark: running mean)",
                             [(x, y, (190, 200, 230), False), (x, _smooth(y, 50), (30, 60, 160), False)]))
    ex = np.array([r["step"] for r in rows], dtype=np.float64)
    for col in columns[2:]:  # train_loss is the first panel's running mean already
        ey = np.array([r[col] for r in rows], dtype=np.float64)
        panels.append(_panel(col, [(ex, ey, (200, 70, 30), True)]))
    if not panels:
        panels.append(_panel("no steps yet", []))
    cols = min(3, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    sheet = Image.new("RGB", (cols * _PANEL[0], rows_n * _PANEL[1]), "white")
    for i, p in enumerate(panels):
        sheet.paste(p, ((i % cols) * _PANEL[0], (i // cols) * _PANEL[1]))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def write_curves(run: "str | Path") -> tuple[Path, Path]:
    """(Re)write ``curves.csv`` and ``curves.png`` of a run folder from its two logs."""
    run = Path(run)
    steps, evaluations = read_jsonl(run / METRICS), read_jsonl(run / EVALUATIONS)
    columns, rows = curve_rows(steps, evaluations)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    csv_path = write_text_atomically(run / CURVES_CSV, text.getvalue())
    png_path = write_bytes_atomically(run / CURVES_PNG, curves_png(steps, columns, rows))
    return csv_path, png_path

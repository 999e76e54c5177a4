"""Decomposition scores and sampling time for each Euler step count
(``python -m lumix_core.toy.evaluate --steps-sweep 1,2,4,...``).
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Sequence

from ...world.render import RenderResult
from ..model import ToyLumiX
from .held_out import EvalSettings, color_images
from .map_scores import DECOMPOSITION_SCORES, evaluate_decomposition, format_score


def steps_table(model: ToyLumiX, scenes: Sequence[RenderResult], steps: Sequence[int],
                settings: EvalSettings = EvalSettings()) -> list[dict[str, float]]:
    """Decomposition scores for each Euler step count (one row each), with the sampling wall
    time per photo of one batch of ``settings.batch`` photos (decode and finishing included,
    scoring not)."""
    rows = []
    timing = color_images(scenes[: settings.batch])
    for n in steps:
        scores = evaluate_decomposition(model, scenes, replace(settings, steps=int(n)), coherence=False)
        t = time.perf_counter()
        model.generate([""] * len(timing), seed=settings.seed, steps=int(n), true_cfg=1.0, color=timing)
        rows.append({"steps": float(n), "seconds_per_photo": (time.perf_counter() - t) / len(timing), **scores})
    return rows


def steps_markdown(rows: Sequence[dict[str, float]], label: str = "") -> str:
    """Markdown table of :func:`steps_table`'s rows, ``label`` naming the model in each row."""
    keys = DECOMPOSITION_SCORES
    lines = ["| model | steps | " + " | ".join(keys) + " | s / photo |", "|---" * (len(keys) + 3) + "|"]
    for r in rows:
        lines.append(f"| {label} | {int(r['steps'])} | " + " | ".join(format_score(r, k) for k in keys)
                     + f" | {r['seconds_per_photo']:.3f} |")
    return "\n".join(lines)


__all__ = ["steps_table", "steps_markdown"]

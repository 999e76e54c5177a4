"""Decomposition scores during a toy training run: the trainer's ``evaluator``
(:data:`lumix_core.train.fit.Evaluator`), written into the run's curves at each validation.
"""
from __future__ import annotations

from dataclasses import replace

from ..model import ToyLumiX
from ..text import ToyTextEncoder
from .held_out import EvalSettings, held_out_scenes
from .map_scores import DECOMPOSITION_SCORES, evaluate_decomposition


def training_evaluator(text: ToyTextEncoder, scenes: int = 16, steps: int = 8,
                       settings: EvalSettings = EvalSettings(), *, one_step: bool = False):
    """The trainer's ``evaluator`` (:data:`lumix_core.train.fit.Evaluator`) for toy runs: the
    decomposition scores of ``scenes`` held-out scenes at ``steps`` Euler steps (fewer than
    the final evaluation's, so a run can afford one every few hundred steps); ``one_step``:
    of a one-step adapter, decomposing in its one call."""
    held = held_out_scenes(scenes)
    keep = DECOMPOSITION_SCORES
    quick = replace(settings, steps=steps)

    def evaluate(backbone, step: int) -> dict[str, float]:
        scores = evaluate_decomposition(ToyLumiX.live(backbone, text, one_step=one_step), held, quick,
                                        coherence=False)
        return {f"decomposition_{k}": scores[k] for k in keep}

    return evaluate


__all__ = ["training_evaluator"]

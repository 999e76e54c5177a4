"""The synthetic world's seed streams of the toy recipe: one per purpose, never shared.

Scene ``i`` of stream ``s`` is :func:`lumix_core.world.dataset.scene_seed` ``(s, i)``, so the
streams hold disjoint scenes: stage 1 trains on stream 1, stage 2 on stream 2, and the
evaluation's held-out scenes come from stream 3, which no training run ever draws.
"""
from __future__ import annotations

#: Stage 1 (text -> color backbone) trains on this stream.
STAGE1_DATA_SEED = 1
#: Stage 2 (the adapter) trains on this stream; the ``prior`` reference averages its scenes.
STAGE2_DATA_SEED = 2
#: The held-out scenes of every evaluation.
EVAL_DATA_SEED = 3

__all__ = ["STAGE1_DATA_SEED", "STAGE2_DATA_SEED", "EVAL_DATA_SEED"]

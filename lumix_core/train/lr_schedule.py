"""Learning-rate factor per optimizer step: linear warmup, then constant or cosine to 0.

A callable *object* with plain-number attributes rather than a lambda, so that
``LambdaLR.state_dict()`` captures it and the state is JSON (checkpoints use no pickle).
"""
from __future__ import annotations

import math

import torch


class WarmupSchedule:
    def __init__(self, warmup_steps: int, total_steps: int, kind: str = "constant") -> None:
        if kind not in ("constant", "cosine"):
            raise ValueError(f"lr schedule must be 'constant' or 'cosine', got '{kind}'")
        self.warmup_steps, self.total_steps, self.kind = int(warmup_steps), int(total_steps), kind

    def __call__(self, index: int) -> float:
        """Factor for the optimizer step with 0-based ``index`` (the first step gets 1/warmup)."""
        step = index + 1
        if self.warmup_steps and step <= self.warmup_steps:
            return step / self.warmup_steps
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                   kind: str) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupSchedule(warmup_steps, total_steps, kind))

"""Test setup. ``lumix_core`` comes from the package install (README's test command).

The repository root is deliberately *not* put on ``sys.path``: it holds the pack's
``nodes/`` folder, which must never shadow ComfyUI's own top-level ``nodes`` module.
"""
import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

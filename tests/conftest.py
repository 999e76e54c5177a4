"""Test setup. ``lumix_core`` comes from the package install (README's test command).

The repository root is deliberately *not* put on ``sys.path``: it holds the pack's
``nodes/`` folder, which must never shadow ComfyUI's own top-level ``nodes`` module.
"""
import pytest
import torch

# The tests' matmuls are tiny: on a shared 2-core machine one thread runs them several times
# faster than two (no thread hand-off); benchmarks set their own thread count.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

"""The trainer's ablation switches: ``share_query`` (QBA on/off) and ``independent_maps`` (G1 block-diagonal)."""
from __future__ import annotations

import pytest
import torch
from train_helpers import MAPS3, fit_config, synthetic_cache, tiny_flux_file

from lumix_core.model.checkpoint import inspect_adapter, load_adapter
from lumix_core.train.fit import META_SHARE_QUERY, run_fit


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hooks")
    return synthetic_cache(root / "cache", scenes=2, size=4), tiny_flux_file(root / "flux.safetensors")


def _g1(path):
    return [t for k, t in load_adapter(path).state_dict().items() if k.endswith("G1")]


def test_independent_maps_keeps_g1_block_diagonal_while_the_diagonal_trains(files, tmp_path):
    cache, flux = files
    result = run_fit(fit_config(tmp_path, cache, flux, steps=3, independent_maps=True, share_query=False,
                                weight_decay=0.1))
    off = ~torch.eye(MAPS3.size, dtype=torch.bool)
    init = run_fit(fit_config(tmp_path, cache, flux, name="init", steps=1, lr=1e-12, independent_maps=True))
    for trained, start in zip(_g1(result.adapter_path), _g1(init.adapter_path)):
        assert float(trained[off].abs().max()) == 0.0
        assert not torch.allclose(trained[~off], start[~off])  # the per-map entries did train
    meta = inspect_adapter(result.adapter_path).metadata
    assert meta[META_SHARE_QUERY] == "false" and meta["lumix.train.independent_maps"] == "true"
    assert result.model.lumix.share_query is False


def test_defaults_are_the_lumix_recipe(files, tmp_path):
    cache, flux = files
    result = run_fit(fit_config(tmp_path, cache, flux, steps=1))
    off = ~torch.eye(MAPS3.size, dtype=torch.bool)
    assert all(float(t[off].abs().max()) > 0 for t in _g1(result.adapter_path))
    assert inspect_adapter(result.adapter_path).metadata[META_SHARE_QUERY] == "true"
    assert result.model.lumix.share_query is True

"""A ComfyUI checkout (``COMFYUI_PATH``) for the benchmarks: its FLUX classes and our pack loaded as a custom node.

Why through ComfyUI's own classes: the numbers that matter are those of a user's graph, where the
blocks run ComfyUI's casting ops (``manual_cast`` for fp8 weights) and the patches are installed by
the LumiX Load Adapter node. The checkout is put on ``sys.path`` here, never the repository root
(our ``nodes/`` folder would shadow ComfyUI's ``nodes`` module).
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[1]


def comfyui_path() -> Optional[str]:
    """``COMFYUI_PATH`` if set (the benches then measure ComfyUI's model too)."""
    return os.environ.get("COMFYUI_PATH") or None


def import_comfy(cpu: bool) -> None:
    """Put the checkout on ``sys.path``; ``cpu=True`` must come before ``comfy.model_management`` loads."""
    path = comfyui_path()
    if path is None:
        raise RuntimeError("COMFYUI_PATH is not set")
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args

    if cpu:
        args.cpu = True


def load_pack() -> dict[str, type]:
    """Our node classes, loaded by ``nodes.load_custom_node`` from a ``custom_nodes/comfyui-lumix`` link."""
    import nodes

    link = Path(tempfile.mkdtemp(prefix="lumix_bench_")) / "custom_nodes" / "comfyui-lumix"
    link.parent.mkdir(parents=True)
    link.symlink_to(REPO, target_is_directory=True)
    before = set(nodes.NODE_CLASS_MAPPINGS)
    ok = nodes.load_custom_node(str(link))
    if inspect.isawaitable(ok):
        ok = asyncio.run(ok)
    if not ok:
        raise RuntimeError("ComfyUI could not load the pack (see the log above)")
    return {k: nodes.NODE_CLASS_MAPPINGS[k] for k in set(nodes.NODE_CLASS_MAPPINGS) - before}


def flux_model(params: dict, weight_dtype: torch.dtype, device: torch.device, seed: int = 0) -> Any:
    """A ComfyUI FLUX ``ModelPatcher`` with random weights, stored in ``weight_dtype`` on ``device``.

    Set up like ``UNETLoader`` (``weight_dtype`` = the node's choice; ComfyUI picks the compute
    dtype with ``unet_manual_cast``, bf16 for fp8 weights on a GPU). Weights are drawn in float32
    chunks per tensor (fp8 has no random kernels) with a small std, so activations stay finite.
    """
    import comfy.ldm.flux.model as fm
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    fields = {f.name for f in dataclasses.fields(fm.FluxParams)}
    config = comfy.supported_models.Flux({k: v for k, v in params.items() if k in fields or k == "image_model"})
    manual_cast = mm.unet_manual_cast(weight_dtype, device, config.supported_inference_dtypes)
    config.set_inference_dtype(weight_dtype, manual_cast)
    model = config.get_model({}, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            fill = torch.randn(p.shape, generator=g, device=device) * 0.02
            if name.endswith(("_norm.scale", "_norm.weight")):
                fill += 1.0
            p.copy_(fill)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)

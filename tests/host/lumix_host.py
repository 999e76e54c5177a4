"""Host-test helpers: a real ComfyUI from ``COMFYUI_PATH``, tiny models built through ComfyUI's
own classes, and the pack loaded the way ComfyUI loads a custom node.

Why tiny models through the host's classes: the tests must exercise ComfyUI's real model
wrapper, sampler, patcher and VAE code paths (which differ between versions) on a CPU in
seconds. ComfyUI's file detection hard-codes FLUX.1's hidden size in older versions, so the
tiny FLUX is built from a unet config instead of a file.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"

if not COMFYUI_PATH:
    pytest.skip("COMFYUI_PATH is not set: host tests need a ComfyUI checkout", allow_module_level=True)

if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # for pack_import (never the repo root: our nodes/ would shadow ComfyUI's)
if COMFYUI_PATH not in sys.path:
    sys.path.insert(0, COMFYUI_PATH)

from comfy.cli_args import args  # noqa: E402  (ComfyUI)

args.cpu = True  # before anything imports comfy.model_management: no GPU needed

import torch  # noqa: E402

# isort: split
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402

from lumix_core.maps import RELEASE, MapSet  # noqa: E402
from lumix_core.model.adapter import LumiXAdapter, default_spec  # noqa: E402
from lumix_core.model.checkpoint import save_adapter  # noqa: E402

HIDDEN, HEADS, CONTEXT, POOLED = 64, 2, 48, 32

#: FluxParams of a FLUX.1-dev-shaped model, small enough for CPU (head dim 32 split 8/12/12).
TINY_FLUX = dict(
    image_model="flux", in_channels=16, out_channels=16, vec_in_dim=POOLED, context_in_dim=CONTEXT,
    hidden_size=HIDDEN, mlp_ratio=4.0, num_heads=HEADS, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12],
    theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[],
)


def _fill_(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """ComfyUI layers start as torch.empty; give them deterministic small weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("_norm.scale", "_norm.weight")):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return module


def patcher_for(model_config: Any, seed: int) -> Any:
    """A ModelPatcher around ``model_config``'s model with filled weights (float32, CPU)."""
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    _fill_(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def tiny_flux_config(**overrides: Any) -> dict:
    """:data:`TINY_FLUX` with ``overrides``, keeping what this host's ``FluxParams`` takes (its fields vary)."""
    import comfy.ldm.flux.model as fm

    fields = {f.name for f in dataclasses.fields(fm.FluxParams)}
    return {k: v for k, v in dict(TINY_FLUX, **overrides).items() if k in fields or k == "image_model"}


def tiny_flux(seed: int = 0, **overrides: Any) -> Any:
    return patcher_for(comfy.supported_models.Flux(tiny_flux_config(**overrides)), seed)


def tiny_sd15(seed: int = 0) -> Any:
    """A real (tiny) SD1.5 UNet through ComfyUI's SD15 config: the 'wrong family' case."""
    unet = dict(use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False, adm_in_channels=None,
                in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1], transformer_depth=[1],
                channel_mult=[1], transformer_depth_middle=1, use_linear_in_transformer=False, context_dim=32,
                num_head_channels=16, transformer_depth_output=[1, 1], use_temporal_attention=False,
                use_temporal_resblock=False, num_heads=-1)
    return patcher_for(comfy.supported_models.SD15(unet), seed)


def tiny_vae(seed: int = 0) -> Any:
    """A tiny 16-channel AutoencoderKL in comfy.sd.VAE (8x down-scale like the FLUX VAE)."""
    import comfy.ldm.models.autoencoder as ae
    import comfy.sd

    dd = {"double_z": True, "z_channels": 16, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
          "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    params = {"embed_dim": 16, "ddconfig": dd}
    sd = _fill_(ae.AutoencoderKL(**params), seed).state_dict()
    vae = comfy.sd.VAE(sd=sd, config={"params": params})
    vae.latent_channels = 16
    return vae


def conditioning(seed: int = 0, guidance: Optional[float] = 3.5, tokens: int = 8) -> list:
    """CONDITIONING as CLIPTextEncode + FluxGuidance build it, with random tiny embeddings."""
    g = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(1, POOLED, generator=g)}
    if guidance is not None:
        extra["guidance"] = guidance
    return [[torch.randn(1, tokens, CONTEXT, generator=g), extra]]


def random_adapter(maps: MapSet = RELEASE, *, rank: int = 4, hidden: int = HIDDEN, doubles: int = 1, singles: int = 1,
                   seed: int = 0, g3: float = 0.5) -> LumiXAdapter:
    """Published init for G1/G2 and a G3 of scale ``g3`` (0 = the no-op adapter)."""
    from helpers import randomize_

    spec = default_spec(maps=maps, rank=rank, hidden=hidden, double_blocks=doubles, single_blocks=singles)
    return randomize_(LumiXAdapter(spec), seed, g3_scale=g3)


def write_adapter(path: Path, *, metadata: Optional[dict] = None, **kw: Any) -> Path:
    """A :func:`random_adapter` saved to ``path``; ``metadata`` adds keys (e.g. ``lumix.objective``)."""
    return save_adapter(random_adapter(**kw), path, overwrite=True, extra_metadata=metadata)


def write_one_step_adapter(path: Path, **kw: Any) -> Path:
    """A random adapter whose file says it was trained with the one-step objective."""
    from lumix_core.model.checkpoint import META_OBJECTIVE, OBJECTIVE_ONE_STEP

    return write_adapter(path, metadata={META_OBJECTIVE: OBJECTIVE_ONE_STEP}, **kw)


def load_lumix(pack: dict, model: Any, name: str = "lumix.safetensors", strength: float = 1.0) -> Any:
    """``model`` through LumiX Load Adapter (the pack as ComfyUI loaded it)."""
    return pack["LumiXLoadAdapter"]().load(model, name, strength)[0]


def maps_latent(pack: dict, scenes: int = 1, maps: str = RELEASE.to_string(), size: int = 64) -> dict:
    """A LATENT from LumiX Empty Maps Latent: ``scenes`` scenes of ``maps`` at ``size`` x ``size``."""
    return pack["LumiXEmptyMapsLatent"]().make(size, size, scenes, maps)[0]


def dit_patches(model: Any) -> dict:
    """The block replacements in ``model``'s options (``patches_replace["dit"]``)."""
    return model.model_options["transformer_options"]["patches_replace"]["dit"]


def counted_blocks(model: Any, monkeypatch: Any) -> list:
    """The kinds of the LumiX block-patch calls ``model`` makes from now on, in order (appended as they run)."""
    cls = type(dit_patches(model)[("double_block", 0)])
    calls, original = [], cls.__call__
    monkeypatch.setattr(cls, "__call__", lambda self, a, extra: calls.append(self.kind) or original(self, a, extra))
    return calls


def call_node(cls: Any, **inputs: Any) -> tuple:
    """Run a ComfyUI node class directly: V1 (``FUNCTION``) or V3 (``comfy_api`` ``execute``) alike.

    ComfyUI 0.33 defines the custom-sampler nodes (DisableNoise, BasicGuider, SamplerCustomAdvanced...)
    with the V3 schema, 0.3.x with the V1 one.
    """
    if hasattr(cls, "define_schema"):
        out = cls.execute(**inputs)
        return tuple(getattr(out, "args", out))
    return tuple(getattr(cls(), cls.FUNCTION)(**inputs))


def register_models_dir(folder: Path) -> None:
    """Point ComfyUI's 'lumix' models folder at ``folder`` (first), as a user's models/lumix."""
    import folder_paths

    entry = folder_paths.folder_names_and_paths.get("lumix")
    if entry is None:
        folder_paths.folder_names_and_paths["lumix"] = ([str(folder)], {".safetensors"})
    elif str(folder) not in entry[0]:
        entry[0].insert(0, str(folder))
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.pop("lumix", None)


_PACK: dict = {}


def load_pack_as_comfyui(tmp_root: Path) -> tuple[bool, dict]:
    """Load the checkout with ``nodes.load_custom_node`` from a ``custom_nodes/comfyui-lumix`` link.

    Returns ``(ok, {node name: class})``; loaded once per process (ComfyUI loads a pack once).
    """
    if not _PACK:

        link = tmp_root / "custom_nodes" / "comfyui-lumix"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        ok, added = load_custom_node(link)
        _PACK.update(ok=ok, classes=added)
    return _PACK["ok"], _PACK["classes"]


def load_custom_node(path: Path) -> tuple[bool, dict]:
    """``nodes.load_custom_node`` on ``path``, awaited where the host made it async: (imported, {node: class} added)."""
    import nodes

    before = set(nodes.NODE_CLASS_MAPPINGS)
    result = nodes.load_custom_node(str(path))
    ok = asyncio.run(result) if inspect.isawaitable(result) else result
    return bool(ok), {k: nodes.NODE_CLASS_MAPPINGS[k] for k in set(nodes.NODE_CLASS_MAPPINGS) - before}


def pack_classes(tmp_path_factory: Any) -> dict:
    """Body of the ``pack`` fixture (``conftest.py``): the pack loaded as ComfyUI loads it, its node classes."""
    ok, classes = load_pack_as_comfyui(tmp_path_factory.mktemp("comfyui"))
    assert ok, "nodes.load_custom_node returned False (see the log for the import error)"
    return classes


def models_folder(tmp_path_factory: Any, name: str) -> Path:
    """Body of a module's ``models`` fixture: a models/lumix folder holding a random lumix.safetensors."""
    folder = tmp_path_factory.mktemp(name)
    register_models_dir(folder)
    write_adapter(folder / "lumix.safetensors", seed=0)
    return folder

"""The objects LumiX hands to ComfyUI's ModelPatcher: block replacements and wrappers.

ComfyUI-specific glue, but without importing ComfyUI: the host's attention function is
passed in, the call protocols are plain dicts and callables. Kept import-free so the
protocol can be tested against lumix_core's own FLUX blocks in CI.

Why objects (not closures): ComfyUI deep-copies ``model_options`` on every ``clone()`` (up to
0.3.x) and calls ``.to(device)`` / ``.to(dtype)`` on every patch when it loads a model.
These objects return themselves from ``__deepcopy__`` (one adapter in memory however many
clones exist) and move only devices (an fp8 or bf16 adapter keeps its dtype; the QBA
functions cast at run time).
"""
from __future__ import annotations

import inspect
import logging
import weakref
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from ..lumix_core.maps import MapSet
from ..lumix_core.model.adapter import BlockLoRA
from ..lumix_core.model.checkpoint import OBJECTIVE_FLOW_MATCHING
from ..lumix_core.model.qba import double_block_forward, single_block_forward, takes_transformer_options
from ..lumix_core.sampling.layout import (
    MAPS_KEY,
    check_same_maps,
    maps_of,
    noise_is_shared,
    noise_keys,
    objective_warnings,
    pin_inputs,
    require_finite_groups,
    require_flux_latent,
    require_whole_scenes,
    restore_slot,
    scene_count,
    tagged_maps,
)
from ._compile import APPLY_MODEL, options_entry, route_compiled_run

log = logging.getLogger("comfyui-lumix")

AttentionFn = Callable[..., Tensor]


def _device_of_to_args(*args: Any, **kwargs: Any) -> Optional[torch.device]:
    """The device of a ``.to(...)`` call, or None for a dtype-only call (which we ignore)."""
    device = kwargs.get("device")
    for a in args:
        if isinstance(a, Tensor):
            device = a.device
        elif isinstance(a, (str, int, torch.device)):
            device = a
    return None if device is None else torch.device(device)


class _Shared:
    """Shared by reference: deep copies and pickling-free clones return the same object."""

    def __deepcopy__(self, memo: dict) -> "_Shared":
        memo[id(self)] = self
        return self

    def __copy__(self) -> "_Shared":
        return self


class LumiXBlockPatch(_Shared):
    """``patches_replace["dit"][("double_block"|"single_block", i)]``: one FLUX block through QBA.

    ComfyUI calls ``patch(args, {"original_block": wrap})``. The block is recomputed from its own
    submodules by :mod:`lumix_core.model.qba` (so the host's weight casting, fp8 and offloading apply),
    with the host's ``attention``; ``transformer_options`` is passed on only when the host
    passes it. ``original_block`` is never called: the host's blocks update their inputs in
    place, and the QBA result replaces the block entirely.

    The block belongs to the model that runs, not to the one the adapter was loaded on:
    ``clone(force_deepcopy=True)`` (what ComfyUI 0.33's TorchCompileModel does to a dynamic-VRAM
    model) re-creates the model, and blocks of the old one lack the weight patches (LoRAs) of the
    new one. :class:`LumiXSamplingGuard` swaps in :meth:`bound_to` the running model at the start of each run.

    ComfyUI's memory manager sees the adapter through :meth:`models` (a ModelPatcher around it), and
    moves it; a patch moves only its strength tensor. Under ``torch.compile`` the strength is read
    from that tensor, so a compiled graph follows a changed strength instead of baking the number in.
    """

    def __init__(self, kind: str, index: int, block: nn.Module, lora: Optional[BlockLoRA], maps: MapSet,
                 strength: float, attention: AttentionFn, adapter_patcher: Any = None) -> None:
        if kind not in ("double", "single"):
            raise ValueError(f"kind must be 'double' or 'single', got {kind!r}")
        self.kind, self.index = kind, int(index)
        self.block, self.lora, self.maps = block, lora, maps
        self.strength = float(strength)
        self.strength_tensor = torch.tensor(self.strength, dtype=torch.float32)
        self.attention = attention
        self.attention_takes_options = takes_transformer_options(attention)
        self.adapter_patcher = adapter_patcher
        self._bound: "weakref.WeakKeyDictionary[nn.Module, LumiXBlockPatch]" = weakref.WeakKeyDictionary()

    def block_of(self, diffusion_model: nn.Module) -> nn.Module:
        """This patch's block in ``diffusion_model`` (``double_blocks[i]`` or ``single_blocks[i]``)."""
        return getattr(diffusion_model, f"{self.kind}_blocks")[self.index]

    def bound_to(self, diffusion_model: nn.Module) -> "LumiXBlockPatch":
        """The patch computing this block of ``diffusion_model``: ``self``, or one sibling per model.

        Siblings are kept (weakly, per model) so repeated runs hand ComfyUI the same objects, which
        a compiled graph's guards expect.
        """
        block = self.block_of(diffusion_model)
        if block is self.block:
            return self
        sibling = self._bound.get(diffusion_model)
        if sibling is None or sibling.block is not block:
            sibling = object.__new__(type(self))
            sibling.__dict__.update(self.__dict__, block=block, _bound=weakref.WeakKeyDictionary())
            self._bound[diffusion_model] = sibling
        return sibling

    def models(self) -> list:
        """ComfyUI's ``model_patches_models()``: the adapter's ModelPatcher, loaded and offloaded by ComfyUI."""
        return [] if self.adapter_patcher is None else [self.adapter_patcher]

    def to(self, *args: Any, **kwargs: Any) -> "LumiXBlockPatch":
        device = _device_of_to_args(*args, **kwargs)
        if device is not None and self.strength_tensor.device != device:
            self.strength_tensor = self.strength_tensor.to(device)
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        strength = self.strength_tensor if torch.compiler.is_compiling() else self.strength
        common = dict(group=self.maps.size, query_index=self.maps.query_index, strength=strength,
                      attn_mask=args.get("attn_mask"), attention=self.attention,
                      transformer_options=args.get("transformer_options") if self.attention_takes_options else None)
        if self.kind == "double":
            img, txt = double_block_forward(self.block, args["img"], args["txt"], args["vec"], args["pe"],
                                            adapter=self.lora, **common)
            return {"img": img, "txt": txt}
        return {"img": single_block_forward(self.block, args["img"], args["vec"], args["pe"], adapter=self.lora,
                                            **common)}

    def __repr__(self) -> str:
        return (f"LumiXBlockPatch({self.kind}_block {self.index}, maps={self.maps.to_string()}, "
                f"strength={self.strength})")


def compiled_signature(model_options: dict) -> tuple:
    """The Python values a compiled graph bakes in from the block patches: per block, map set and adapter shapes.

    Strength and the factors' values are read at run time (tensors), so they are not part of it.
    """
    dit = options_entry(model_options, "patches_replace", "dit")
    rows = []
    for key, patch in dit.items():
        if type(patch).__name__ != "LumiXBlockPatch":
            rows.append((key, type(patch).__qualname__))
            continue
        loras = [] if patch.lora is None else [(m.num_maps, m.in_features, m.out_features, m.rank, m.alpha,
                                                str(m.G1.dtype)) for m in patch.lora.children()]
        rows.append((key, patch.maps.to_string(), tuple(loras), getattr(patch.attention, "__qualname__", "")))
    return tuple(sorted(rows, key=repr))


def bind_block_patches(model_options: dict, diffusion_model: nn.Module) -> int:
    """Point every LumiX block patch of ``model_options`` at ``diffusion_model``'s blocks; how many changed.

    Matched by class name, as ``installed_adapter`` does (a second copy of the pack has its own classes).
    """
    dit = options_entry(model_options, "patches_replace", "dit")
    changed = 0
    for key, patch in list(dit.items()):
        if type(patch).__name__ == "LumiXBlockPatch":
            bound = patch.bound_to(diffusion_model)
            if bound is not patch:
                dit[key] = bound
                changed += 1
    return changed


class LumiXSamplingGuard(_Shared):
    """``OUTER_SAMPLE`` wrapper: refuses batches QBA cannot run, ahead of the first step.

    Checks, for any sampler node (stock KSampler, SamplerCustomAdvanced, ours): a LATENT from the
    LumiX latent nodes holds the adapter's map set, in its order (the tag on the samples tensor,
    see ``lumix_core.sampling.layout.tag_maps``); the batch is whole groups of M maps and finite; no
    context-window handler slices the batch dimension; and warns when the maps of a scene did
    not get the same noise (a LATENT without LumiX batch indices), and when the adapter is sampled
    unlike it was trained (``objective``: a one-step adapter with several steps, random noise or no
    pinned photo; a multi-step adapter in one step; see ``lumix_core.sampling.layout.objective_warnings``).

    It is also what :func:`nodes.lumix_model.installed_adapter` returns: the installed adapter's
    ``maps``, ``adapter_name`` and ``objective``.
    """

    def __init__(self, maps: MapSet, adapter_name: str, objective: str = OBJECTIVE_FLOW_MATCHING) -> None:
        self.maps, self.adapter_name, self.objective = maps, adapter_name, objective

    def __call__(self, executor: Any, noise: Tensor, latent_image: Tensor, *args: Any, **kwargs: Any) -> Any:
        guider = getattr(executor, "class_obj", None)
        options = getattr(guider, "model_options", None) or {}
        handler = options.get("context_handler")
        if handler is not None and getattr(handler, "dim", None) == 0:
            raise ValueError(
                f"a context-window handler ({type(handler).__name__}) slices the batch dimension, which would split "
                f"LumiX scene groups of {self.maps.size} maps; remove the context-window node when sampling with "
                f"{self.adapter_name}")
        if isinstance(latent_image, Tensor) and not getattr(latent_image, "is_nested", False):
            require_flux_latent(latent_image, "the LATENT to sample")
            latent_maps = tagged_maps(latent_image)
            if latent_maps is None:
                holder = latent_dict_of(latent_image)
                latent_maps = None if holder is None else maps_of(holder)
            if latent_maps is not None:
                check_same_maps(latent_maps, self.maps, self.adapter_name)
            try:
                scene_count(latent_image.shape[0], self.maps)
            except ValueError as e:
                raise ValueError(f"{e}. The model is patched with LumiX adapter {self.adapter_name}: create the "
                                 "latent with LumiX Empty Maps Latent or LumiX Photo To Maps Latent") from None
            require_finite_groups(latent_image, self.maps, "the LATENT to sample",
                                  "the node that made it produced invalid values; make it again with LumiX Empty "
                                  "Maps Latent or LumiX Photo To Maps Latent")
            real_noise = isinstance(noise, Tensor) and not getattr(noise, "is_nested", False) and bool(noise.any())
            if real_noise:
                require_whole_scenes(noise_keys(noise), self.maps, "the LATENT to sample")
            if real_noise and not noise_is_shared(noise, self.maps.size):
                log.warning("LumiX: the maps of a scene got different noise; use a LumiX latent node (its "
                            "batch_index gives every map of a scene the same noise, as LumiX was trained)")
        sigmas = args[1] if len(args) > 1 else kwargs.get("sigmas")  # outer_sample(noise, latent, sampler, sigmas, ...)
        if isinstance(sigmas, Tensor) and isinstance(noise, Tensor) and not getattr(noise, "is_nested", False):
            for text in objective_warnings(self.objective, sigmas.flatten().tolist(), pinned=is_pinned(options),
                                           noise=bool(noise.any()), adapter_name=self.adapter_name):
                log.warning("LumiX: %s", text)
        patcher = getattr(guider, "model_patcher", None)
        if patcher is not None and hasattr(patcher, "get_model_object"):
            diffusion_model = patcher.get_model_object("diffusion_model")
            bind_block_patches(options, diffusion_model)
            route_compiled_run(options, diffusion_model, lambda: compiled_signature(options))
        return executor(noise, latent_image, *args, **kwargs)


def latent_dict_of(samples: Tensor, depth: int = 24) -> Optional[dict]:
    """The LATENT dict holding ``samples`` with a LumiX map set, found in the sampler node's frame; or None.

    Why: stock samplers (KSampler, SamplerCustomAdvanced) hand wrappers only the samples tensor, and the
    tensor's map-set tag is lost by any node that copies the tensor (Latent From Batch clones it), while
    the dict's ``lumix_maps`` key survives, since ComfyUI's latent nodes copy the dict. The node that
    called the sampler still holds that dict in a local variable.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(depth):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            for value in list(frame.f_locals.values()):
                if isinstance(value, dict) and value.get("samples") is samples and MAPS_KEY in value:
                    return value
        return None
    finally:
        del frame


def is_pinned(model_options: dict) -> bool:
    """Whether ``model_options`` carry a :class:`LumiXPinWrapper` (a photo pinned by LumiX Pin Photo or LumiX Sampler).

    Matched by class name, as ``installed_adapter`` does (a second copy of the pack has its own classes).
    """
    wrappers = options_entry(model_options, "wrappers", APPLY_MODEL)
    return any(type(w).__name__ == "LumiXPinWrapper" for ws in wrappers.values() for w in ws)


class LumiXPinWrapper(_Shared):
    """``APPLY_MODEL`` wrapper: map ``slot`` of every scene is fed clean with ``t = 0``.

    ``clean`` holds the raw (VAE-space) latents of the pinned slot, ``[N, C, h, w]``; they are
    brought to model space with the host model's own ``process_latent_in`` at every call.
    With ``t = 0`` ComfyUI's FLUX denoiser returns the input unchanged, so the slot is never
    updated and the sampler returns it equal to the photo's latent.
    """

    def __init__(self, clean: Tensor, maps: MapSet, slot: str) -> None:
        self.clean, self.maps, self.slot = clean, maps, slot

    def __call__(self, executor: Any, x: Tensor, t: Tensor, c_concat: Any, c_crossattn: Any, control: Any,
                 transformer_options: dict, **kwargs: Any) -> Tensor:
        model = executor.class_obj
        clean = model.process_latent_in(self.clean.to(device=x.device, dtype=x.dtype))
        chunks = transformer_options.get("cond_or_uncond")
        x, t = pin_inputs(x, t, clean, self.maps, self.slot, chunks=len(chunks) if chunks else None)
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


class LumiXPinnedOutput(_Shared):
    """``OUTER_SAMPLE`` wrapper beside :class:`LumiXPinWrapper`: the sampled latent's pinned slot is the photo, exactly.

    ``clean`` is the same raw (VAE-space) ``[N, C, h, w]`` latent the pin wrapper feeds. The host's
    sampler returns the slot through its own arithmetic (the last Euler step, the latent scaling into
    model space and back), a rounding error away from the photo; written back here, it is bit-identical
    (as ``lumix_core``'s sampler returns it).
    """

    def __init__(self, clean: Tensor, maps: MapSet, slot: str) -> None:
        self.clean, self.maps, self.slot = clean, maps, slot

    def __call__(self, executor: Any, noise: Tensor, latent_image: Tensor, *args: Any, **kwargs: Any) -> Any:
        out = executor(noise, latent_image, *args, **kwargs)
        if not isinstance(out, Tensor) or getattr(out, "is_nested", False):
            return out
        return restore_slot(out, self.clean, self.maps, self.slot)

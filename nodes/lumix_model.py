"""LumiX model nodes: attach an adapter to a FLUX.1 MODEL, and pin a photo for decomposition.

Thin adapters: ComfyUI types in, the checks and maths of ``lumix_core`` (through the
protocol objects of :mod:`._patches`), ComfyUI types out. ComfyUI is imported lazily.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from ..lumix_core.model.checkpoint import OBJECTIVE_ONE_STEP, adapter_objective
from ..lumix_core.sampling.layout import PIN_KEY, maps_of, slot_latents
from . import _host
from ._compile import options_entry
from ._patches import LumiXBlockPatch, LumiXPinnedOutput, LumiXPinWrapper, LumiXSamplingGuard

log = logging.getLogger("comfyui-lumix")

CATEGORY = "LumiX/Model"
PIN_WRAPPER_KEY = "lumix_pin"
GUARD_WRAPPER_KEY = "lumix_guard"


def _wrappers_mp():
    import comfy.patcher_extension

    return comfy.patcher_extension.WrappersMP


def installed_adapter(model: Any) -> Optional[LumiXSamplingGuard]:
    """The sampling guard :func:`patch_model` put on ``model``, or None: the installed adapter's ``maps``,
    ``adapter_name`` (file name) and ``objective`` (``"flow-matching"`` or ``"one-step"``, from the file's
    ``lumix.objective`` metadata; see ``lumix_core.model.checkpoint.adapter_objective``).

    Matched by class name, not identity: a second copy of the pack (installed twice, or imported by
    tests beside ComfyUI's copy) defines its own class object.
    """
    getter = getattr(model, "get_wrappers", None)
    if getter is None:
        return None
    guards = [w for w in getter(_wrappers_mp().OUTER_SAMPLE, GUARD_WRAPPER_KEY)
              if type(w).__name__ == "LumiXSamplingGuard"]
    return guards[-1] if guards else None


def patch_model(model: Any, adapter_name: str, strength: float) -> Any:
    """Clone ``model`` and route every block the adapter names through QBA + Tensor LoRA.

    One adapter per model: a model that already carries one is refused (its G1 mixes the maps of
    one map set; a second adapter would silently replace it, and stacking is not defined).
    """
    shape = _host.flux_shape(model)  # refuses non-FLUX.1 models ahead of any file read
    present = installed_adapter(model)
    if present is not None:
        raise ValueError(
            f"this MODEL already has the LumiX adapter {present.adapter_name}; "
            "LumiX runs one adapter at a time, "
            f"so {os.path.basename(adapter_name)} is not loaded over it. Connect the FLUX model itself (UNETLoader) "
            "to this LumiX Load Adapter, or remove one of the two LumiX Load Adapter nodes")
    path = _host.adapter_path(adapter_name) if not os.path.isabs(adapter_name) else adapter_name
    adapter, info = _host.ADAPTERS.get(path, shape)
    maps = adapter.maps
    patched = model.clone()
    _warn_about_replaced_patches(patched)
    dm = patched.model.diffusion_model
    attention = _host.flux_attention()
    owner = _host.adapter_patcher(adapter, patched)
    for i in adapter.spec.double_blocks:
        patched.set_model_patch_replace(
            LumiXBlockPatch("double", i, dm.double_blocks[i], adapter.for_double(i), maps, strength, attention, owner),
            "dit", "double_block", i)
    for i in adapter.spec.single_blocks:
        patched.set_model_patch_replace(
            LumiXBlockPatch("single", i, dm.single_blocks[i], adapter.for_single(i), maps, strength, attention, owner),
            "dit", "single_block", i)
    wrappers = _wrappers_mp()
    objective = adapter_objective(info)
    patched.add_wrapper_with_key(wrappers.OUTER_SAMPLE, GUARD_WRAPPER_KEY,
                                 LumiXSamplingGuard(maps, info.path.name, objective))
    if objective == OBJECTIVE_ONE_STEP:
        log.info("LumiX: %s is a one-step adapter: decompose a photo in one step with the noise disabled "
                 "(LumiX Sampler, scheduler 'lumix_one_step')", info.path.name)
    return patched


def _warn_about_replaced_patches(model: Any) -> None:
    """LumiX recomputes whole blocks: other block replacements and in-block hooks do not apply."""
    foreign = [k for k, p in options_entry(model.model_options, "patches_replace", "dit").items()
               if type(p).__name__ != "LumiXBlockPatch"]
    patches = options_entry(model.model_options, "patches")
    hooks = [k for k in ("attn1_patch", "attn1_output_patch") if patches.get(k)]
    if foreign:
        log.warning("LumiX: replacing other block patches on %s; load LumiX first or drop them", foreign[:3])
    if hooks:
        log.warning("LumiX: the model has %s hooks; LumiX recomputes the FLUX blocks, so they are not applied",
                    hooks)


def pin_model(model: Any, latent: dict) -> Any:
    """Clone ``model`` with an APPLY_MODEL wrapper that feeds the latent's pinned slot clean at t = 0.

    An OUTER_SAMPLE wrapper beside it writes the photo's latent back into the sampled slot, so any
    sampler returns the slot bit-identical to the photo (not a rounding error away from it).
    """
    slot = latent.get(PIN_KEY)
    if not slot:
        raise ValueError("this LATENT has no pinned photo: make it with LumiX Photo To Maps Latent "
                         "(text-to-maps latents need no pinning)")
    maps = maps_of(latent)
    clean = slot_latents(latent["samples"], maps, slot).clone()
    pinned = model.clone()
    wrappers = _wrappers_mp()
    if hasattr(pinned, "remove_wrappers_with_key"):
        pinned.remove_wrappers_with_key(wrappers.APPLY_MODEL, PIN_WRAPPER_KEY)
        pinned.remove_wrappers_with_key(wrappers.OUTER_SAMPLE, PIN_WRAPPER_KEY)
    pinned.add_wrapper_with_key(wrappers.APPLY_MODEL, PIN_WRAPPER_KEY, LumiXPinWrapper(clean, maps, slot))
    pinned.add_wrapper_with_key(wrappers.OUTER_SAMPLE, PIN_WRAPPER_KEY, LumiXPinnedOutput(clean, maps, slot))
    return pinned


class LumiXLoadAdapter:
    DESCRIPTION = (
        "Attaches a LumiX adapter to a FLUX.1 MODEL, so one sampling pass makes albedo, irradiance, color, depth "
        "and normal maps that agree. Connect the FLUX model (UNETLoader), then sample a LumiX latent with LumiX "
        "Sampler; one-step adapters load the same way."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The FLUX model with the LumiX adapter attached (a clone; the input model is unchanged).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A FLUX.1 model (dev or schnell; bf16, fp8 or GGUF) without a LumiX "
                                               "adapter; other model families are refused."}),
                "adapter": (_host.adapter_files(), {
                    "tooltip": f"LumiX adapter file (.safetensors) in ComfyUI/models/{_host.ADAPTER_FOLDER} or "
                               f"models/{_host.LORA_FOLDER}; press R to refresh an empty list."}),
                "strength": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                    "tooltip": "Tensor LoRA strength; 0 keeps only the shared queries, so color is the plain FLUX "
                               "image."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, adapter):
        """Replaces ComfyUI's bare "Value not in list" for a missing file with where the file goes."""
        if adapter in _host.adapter_files():
            return True
        return _host.unreadable_adapter(adapter) or (
            f"adapter file '{adapter}' is in neither ComfyUI/models/{_host.ADAPTER_FOLDER} nor "
            f"models/{_host.LORA_FOLDER}: put the LumiX adapter (e.g. lumix.safetensors) into "
            f"ComfyUI/models/{_host.ADAPTER_FOLDER}, press R in ComfyUI to refresh, and pick it in LumiX Load Adapter")

    def load(self, model, adapter, strength):
        return (patch_model(model, adapter, float(strength)),)


class LumiXPinPhoto:
    DESCRIPTION = (
        "Pins the photo of a LumiX Photo To Maps Latent in the color slot, so a stock sampler (SamplerCustomAdvanced) "
        "decomposes the other maps from it. Sample the pinned model with the same LATENT; LumiX Sampler pins by itself."
    )
    CATEGORY = CATEGORY
    FUNCTION = "pin"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the photo pinned; sample it with the same LATENT.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The LumiX model from LumiX Load Adapter."}),
                "latent": ("LATENT", {"tooltip": "The latent from LumiX Photo To Maps Latent; its color slot holds "
                                                 "the photo to pin."}),
            }
        }

    def pin(self, model, latent):
        return (pin_model(model, latent),)


NODE_CLASS_MAPPINGS = {
    "LumiXLoadAdapter": LumiXLoadAdapter,
    "LumiXPinPhoto": LumiXPinPhoto,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LumiXLoadAdapter": "LumiX Load Adapter",
    "LumiXPinPhoto": "LumiX Pin Photo",
}

"""ComfyUI lookups shared by the LumiX nodes, each importing ComfyUI lazily.

The pack must import where ComfyUI is absent (CI, packaging), so ``comfy``/``folder_paths``
are imported inside these functions. Where a node's *definition* needs a host list (sampler
names, adapter files) and ComfyUI is absent, a fallback is returned and marked as such: it
only serves tests and packaging tools, never a running ComfyUI.
"""
from __future__ import annotations

import logging
import os
import weakref
from typing import Any, Optional

from ..lumix_core.model.adapter_cache import AdapterCache
from ..lumix_core.model.checkpoint import ModelShape
from ..lumix_core.model.flux_check import NotFluxError, flux1_shape

log = logging.getLogger("comfyui-lumix")

#: ComfyUI models folder for LumiX adapters (``models/lumix``); ``models/loras`` is listed too.
ADAPTER_FOLDER = "lumix"
LORA_FOLDER = "loras"
ADAPTER_EXTENSIONS = {".safetensors"}

#: Used only when ComfyUI cannot be imported (tests, packaging): node definitions still build.
FALLBACK_SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m"]
FALLBACK_SCHEDULERS = ["simple", "normal", "beta"]

#: ComfyUI model classes built on FLUX's layout that are not FLUX.1 (other blocks or training).
NOT_FLUX1_MODEL_CLASSES = {"Flux2", "Chroma", "ChromaRadiance", "LongCatImage"}

#: One cache for the process: adapters are shared by every model the loader patches.
ADAPTERS = AdapterCache(max_entries=2)

#: Broken links and folders already reported as not listed (the list is rebuilt for every prompt).
_UNLISTED: set[str] = set()


def register_adapter_folder() -> None:
    """Register ``models/lumix`` (safetensors only) with ``folder_paths`` and create it; no-op without ComfyUI.

    Created so the user finds the folder the adapter goes into (the README and the loader's tooltip
    name it); a read-only models folder is only logged: ``models/loras`` still works.
    """
    try:
        import folder_paths
    except ImportError:
        return
    path = os.path.join(folder_paths.models_dir, ADAPTER_FOLDER)
    entry = folder_paths.folder_names_and_paths.get(ADAPTER_FOLDER)
    if entry is not None and path in entry[0]:
        if isinstance(entry[1], set):
            entry[1].update(ADAPTER_EXTENSIONS)
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        log.warning("LumiX: cannot create %s (%s); put adapters into models/%s instead", path, e.strerror or e,
                    LORA_FOLDER)
    if entry is None:
        folder_paths.folder_names_and_paths[ADAPTER_FOLDER] = ([path], set(ADAPTER_EXTENSIONS))
    else:
        entry[0].append(path)
        if isinstance(entry[1], set):
            entry[1].update(ADAPTER_EXTENSIONS)


def adapter_files() -> list[str]:
    """Adapter choices: safetensors files in ``models/lumix`` and ``models/loras`` (lumix first)."""
    try:
        import folder_paths
    except ImportError:
        return []
    register_adapter_folder()
    names: list[str] = []
    for folder in (ADAPTER_FOLDER, LORA_FOLDER):
        try:
            files = folder_paths.get_filename_list(folder)
        except KeyError:
            continue
        for name in files:
            if os.path.splitext(name)[1].lower() not in ADAPTER_EXTENSIONS or name in names:
                continue
            problem = _not_a_file(folder_paths, folder, name)
            if not problem:
                names.append(name)
            elif problem not in _UNLISTED:  # offered, it could only fail when picked; said once, not every prompt
                _UNLISTED.add(problem)
                log.warning("LumiX: not listing adapter %s", problem)
    return names


def unreadable_adapter(name: str) -> Optional[str]:
    """The refusal for an adapter choice that is a broken link or a folder in the adapter folders, else None."""
    import folder_paths

    for folder in (ADAPTER_FOLDER, LORA_FOLDER):
        problem = _not_a_file(folder_paths, folder, name) if folder in folder_paths.folder_names_and_paths else None
        if problem:
            return (f"adapter '{name}' cannot be read: {problem}; put the adapter file itself there (or fix the "
                    "link), press R in ComfyUI to refresh, and pick it in LumiX Load Adapter")
    return None


def _not_a_file(folder_paths: Any, folder: str, name: str) -> Optional[str]:
    """What ``name`` is in ``models/<folder>`` when it is no readable file (a broken link, a folder), else None."""
    problem = None
    for base in folder_paths.get_folder_paths(folder):
        path = os.path.join(base, name)
        if os.path.isfile(path):
            return None
        if os.path.islink(path) and not os.path.exists(path):
            problem = problem or f"{path}: a broken link (its target {os.readlink(path)} does not exist)"
        elif os.path.isdir(path):
            problem = problem or f"{path}: a folder, not an adapter file"
    return problem


def adapter_path(name: str) -> str:
    """Full path of an adapter choice (``models/lumix`` wins over ``models/loras``)."""
    import folder_paths

    register_adapter_folder()
    for folder in (ADAPTER_FOLDER, LORA_FOLDER):
        try:
            path = folder_paths.get_full_path(folder, name)
        except KeyError:
            path = None
        if path:
            return path
    problem = unreadable_adapter(name)
    if problem:
        raise FileNotFoundError(problem)
    raise FileNotFoundError(f"adapter '{name}' is in neither models/{ADAPTER_FOLDER} nor models/{LORA_FOLDER}; "
                            f"put lumix.safetensors into ComfyUI/models/{ADAPTER_FOLDER} and refresh")


def sampler_names() -> list[str]:
    try:
        import comfy.samplers
    except ImportError:
        return list(FALLBACK_SAMPLERS)
    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> list[str]:
    try:
        import comfy.samplers
    except ImportError:
        return list(FALLBACK_SCHEDULERS)
    return list(comfy.samplers.KSampler.SCHEDULERS)


def model_family(patcher: Any) -> str:
    """A readable name of a MODEL's family (ComfyUI's model config class, e.g. ``SDXL``)."""
    model = getattr(patcher, "model", None)
    config = getattr(model, "model_config", None)
    names = [type(x).__name__ for x in (config, model) if x is not None]
    return f"{names[0]} ({names[1]})" if len(names) == 2 else (names[0] if names else type(patcher).__name__)


def flux_shape(patcher: Any) -> ModelShape:
    """The FLUX.1 shape of a ComfyUI MODEL, or a clear refusal for anything else."""
    import comfy.ldm.flux.model

    model = getattr(patcher, "model", None)
    dm = getattr(model, "diffusion_model", None)
    family = model_family(patcher)
    if model is None or dm is None:
        raise NotFluxError(f"expected a ComfyUI MODEL (a ModelPatcher), got {type(patcher).__name__}")
    if type(model).__name__ == "Flux" and not isinstance(dm, comfy.ldm.flux.model.Flux):
        raise NotFluxError(
            f"LumiX recomputes FLUX.1's double- and single-stream blocks, but the connected FLUX MODEL runs a "
            f"{type(dm).__name__} transformer without them (runtimes such as Nunchaku fuse the blocks). Load FLUX.1 "
            "with UNETLoader, a FLUX.1 checkpoint loader, an fp8 file or a GGUF loader, and connect that MODEL.")
    if type(model).__name__ in NOT_FLUX1_MODEL_CLASSES or not isinstance(dm, comfy.ldm.flux.model.Flux):
        raise NotFluxError(
            f"LumiX works on FLUX.1 only, but the connected MODEL is {family} with a "
            f"{type(dm).__module__}.{type(dm).__name__} transformer. Load FLUX.1 (dev or schnell) with "
            "UNETLoader, a FLUX.1 checkpoint loader, an fp8 file or a GGUF loader, and connect that MODEL.")
    params = getattr(dm, "params", None)
    if getattr(params, "global_modulation", False):
        raise NotFluxError(f"LumiX works on FLUX.1 only, but {family} uses global modulation (FLUX.2 layout)")
    return flux1_shape(dm, family)


def empty_noise(samples: Any) -> Any:
    """ComfyUI's disabled noise for a latent (what DisableNoise draws): zeros on the CPU, like its noise."""
    import comfy.sample

    prepare = getattr(comfy.sample, "prepare_empty_noise", None)
    if prepare is not None:
        return prepare(samples)
    import torch

    return torch.zeros(samples.shape, dtype=samples.dtype, layout=samples.layout, device="cpu")


def flux_attention():
    """ComfyUI's FLUX attention (RoPE + the host's optimized attention)."""
    import comfy.ldm.flux.math

    return comfy.ldm.flux.math.attention


def interrupted_check() -> None:
    """Raise ComfyUI's interruption if the user pressed Cancel (call inside own loops)."""
    try:
        import comfy.model_management
    except ImportError:
        return
    comfy.model_management.throw_exception_if_processing_interrupted()


def intermediate_device() -> Optional[Any]:
    try:
        import comfy.model_management
    except ImportError:
        return None
    return comfy.model_management.intermediate_device()


_ADAPTER_PATCHERS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def adapter_patcher(adapter: Any, model: Any) -> Any:
    """A ComfyUI ModelPatcher around ``adapter`` on ``model``'s devices: what the block patches' ``models()`` return.

    One per adapter object and load device, so every patch and clone hands ComfyUI's memory manager the same
    patcher (it de-duplicates by identity) and the adapter's bytes are counted once.
    """
    import comfy.model_patcher

    per_device = _ADAPTER_PATCHERS.setdefault(adapter, {})
    key = (str(model.load_device), str(model.offload_device))
    patcher = per_device.get(key)
    if patcher is None:
        cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
        patcher = cls(adapter, load_device=model.load_device, offload_device=model.offload_device)
        per_device[key] = patcher
    return patcher

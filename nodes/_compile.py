"""torch.compile for LumiX runs: LumiX graphs get their own compiled entry, keyed by the LumiX setup.

ComfyUI's TorchCompileModel compiles ``diffusion_model`` and (in 0.33) tells Dynamo to skip every
guard on ``transformer_options``, where the block patches live. A graph traced for one set of
patches would then be replayed for another: a plain model would replay LumiX's graph and LumiX the
plain one. So a LumiX run swaps ComfyUI's compile wrapper for :func:`_compiled_wrapper`, which calls
the diffusion model through :func:`_lumix_entry`: a separate code object (its own Dynamo cache,
apart from the plain model's) with a string ``lumix_key`` naming the model and the LumiX setup,
which Dynamo guards by value. The user's compile settings (backend, mode, guard filter) are kept.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import torch
from torch import nn

#: ``comfy_api.torch_helpers.torch_compile``: the model_options key of the compile settings and the wrapper key.
TORCH_COMPILE_KWARGS = "torch_compile_kwargs"
COMPILE_KEY = "torch.compile"
#: ``comfy.patcher_extension.WrappersMP.APPLY_MODEL``: where the compile wrapper and LumiX's pin wrapper sit.
APPLY_MODEL = "apply_model"

_lock = threading.Lock()
_setups: dict[tuple, int] = {}  # compiled_signature -> small index, for readable keys
_entries: dict[str, Callable] = {}  # repr(compile settings) -> torch.compile(_lumix_entry, **settings)


def options_entry(model_options: dict, *keys: str) -> dict:
    """``model_options["transformer_options"][keys[0]][keys[1]]...``: the dict itself, so edits land in it;
    an empty dict where a level is missing."""
    entry = model_options.get("transformer_options") or {}
    for key in keys:
        entry = entry.get(key) or {}
    return entry


def _lumix_entry(diffusion_model: nn.Module, lumix_key: str, *args: Any, **kwargs: Any) -> Any:
    """The compiled function of LumiX runs; reading ``lumix_key`` makes Dynamo guard on its value."""
    if not lumix_key:
        raise ValueError("LumiX: a compiled run needs its setup key")
    return diffusion_model(*args, **kwargs)


class _CompiledDiffusionModel(nn.Module):
    """Stands in for ``BaseModel.diffusion_model`` during one LumiX run (attribute reads go to the real one)."""

    def __init__(self, diffusion_model: nn.Module, entry: Callable, lumix_key: str) -> None:
        super().__init__()
        self.lumix_inner = diffusion_model
        self.lumix_entry = entry
        self.lumix_key = lumix_key

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.lumix_entry(self.lumix_inner, self.lumix_key, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("lumix_inner"), name)


def _compiled_entry(settings: dict) -> Callable:
    key = repr(sorted(settings.items(), key=lambda kv: kv[0]))
    with _lock:
        entry = _entries.get(key)
        if entry is None:
            entry = _entries[key] = torch.compile(_lumix_entry, **settings)
    return entry


def _compiled_wrapper(entry: Callable, lumix_key: str) -> Callable:
    def wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
        base = executor.class_obj
        inner = base.diffusion_model
        base.diffusion_model = _CompiledDiffusionModel(inner, entry, lumix_key)
        try:
            return executor(*args, **kwargs)
        finally:
            base.diffusion_model = inner

    return wrapper


def route_compiled_run(model_options: dict, diffusion_model: nn.Module, signature: Callable[[], tuple]) -> bool:
    """In one run's ``model_options``, replace ComfyUI's compile wrapper by LumiX's; whether there was one.

    ``signature()`` names the LumiX setup; it is computed only for a compiled run.
    """
    settings = model_options.get(TORCH_COMPILE_KWARGS)
    wrappers = options_entry(model_options, "wrappers", APPLY_MODEL)
    if settings is None or not wrappers.get(COMPILE_KEY):
        return False
    with _lock:
        setup = _setups.setdefault(signature(), len(_setups))
    lumix_key = f"lumix:{id(diffusion_model)}:{setup}"
    wrappers[COMPILE_KEY] = [_compiled_wrapper(_compiled_entry(dict(settings)), lumix_key)]
    return True

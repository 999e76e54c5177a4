"""Thin ComfyUI adapters. Each submodule defines NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS.

Submodules import ComfyUI (``comfy``, ``folder_paths``) lazily inside node functions, so the
pack imports as a package even where ComfyUI is absent (tests, packaging tools).
"""
from __future__ import annotations

import importlib

_MODULES: tuple[str, ...] = ("compositing", "lumix_model", "lumix_latents", "lumix_sampler", "lumix_maps", "lumix_shot")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

for _name in _MODULES:
    _mod = importlib.import_module(f".{_name}", __name__)
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)

# The models/lumix folder must exist in folder_paths by the time a node lists its files.
from ._host import register_adapter_folder as _register_adapter_folder  # noqa: E402

_register_adapter_folder()

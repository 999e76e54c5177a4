"""Thin ComfyUI adapters. Each submodule defines NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS.

Submodules import ComfyUI (``comfy``, ``folder_paths``) lazily inside node functions, so the
pack imports as a package even where ComfyUI is absent (tests, packaging tools).
"""
from __future__ import annotations

import importlib

_MODULES: tuple[str, ...] = ("compositing",)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

for _name in _MODULES:
    _mod = importlib.import_module(f".{_name}", __name__)
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)

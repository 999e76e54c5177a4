"""Import this checkout as the ComfyUI node pack package, the way ComfyUI loads it.

Why: the repository root *is* the package (ComfyUI imports the pack folder by path), and
its ``nodes/`` must never become a top-level ``nodes`` module -- that name is ComfyUI's own.
So tests never put the root on ``sys.path``; they import ``comfyui_lumix.<module>`` through
a package object whose ``__path__`` is the checkout. Neither the root ``__init__.py`` nor
``nodes/__init__.py`` is executed (they register every node, some of which need ComfyUI);
the requested module and what it imports are loaded on demand.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "comfyui_lumix"


#: Sub-packages whose ``__init__`` registers nodes and is therefore skipped.
BARE_SUBPACKAGES = ("nodes",)


def _bare_package(name: str, folder: Path) -> types.ModuleType:
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name, f"{folder} as a package (tests: __init__ not executed)")
        module.__path__ = [str(folder)]  # type: ignore[attr-defined]
        module.__file__ = str(folder / "__init__.py")
        module.__package__ = name
        sys.modules[name] = module
    return module


def load_pack() -> types.ModuleType:
    """The pack package object (created once per process, reused afterwards)."""
    pack = _bare_package(PACKAGE, ROOT)
    for sub in BARE_SUBPACKAGES:
        setattr(pack, sub, _bare_package(f"{PACKAGE}.{sub}", ROOT / sub))
    return pack


def pack_module(name: str) -> types.ModuleType:
    """Import ``comfyui_lumix.<name>``, e.g. ``pack_module("nodes.compositing")``."""
    load_pack()
    return importlib.import_module(f"{PACKAGE}.{name}")

"""What a ComfyUI-Manager install gets: requirements.txt equals pyproject's dependencies less torch, and the
nodes' and the demo's code runs without the training extras (opencv, tqdm, PyYAML)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ONLY = ("cv2", "tqdm", "yaml")
NODE_MODULES = sorted(p.stem for p in (ROOT / "nodes").glob("*.py") if not p.stem.startswith("_"))


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_requirements_txt_is_pyproject_dependencies_without_torch():
    declared = [r for r in _pyproject()["project"]["dependencies"] if _name(r) != "torch"]
    listed = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    assert sorted(listed) == sorted(declared), "requirements.txt must list pyproject's dependencies less torch"


def test_training_extras_are_not_runtime_dependencies():
    project = _pyproject()["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    train = {_name(r) for r in project["optional-dependencies"]["train"]}
    assert {"opencv-python", "tqdm", "pyyaml"} <= train
    assert not runtime & train
    assert train <= {_name(r) for r in project["optional-dependencies"]["test"]}


def test_nodes_and_demo_run_without_the_training_extras(tmp_path):
    """In a fresh interpreter that cannot import cv2, tqdm or yaml: import every node module and run the demo."""
    script = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAIN_ONLY!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(ROOT / "tests")!r})
from pack_import import pack_module
nodes = {{}}
for module in {NODE_MODULES!r}:
    nodes.update(pack_module("nodes." + module).NODE_CLASS_MAPPINGS)
assert len(nodes) >= 12, nodes
from lumix_core.cli import main
sys.exit(main(["demo", "--out", {str(tmp_path / "demo")!r}, "--threads", "1"]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert any((tmp_path / "demo").iterdir())


def test_lumix_train_without_the_extras_says_what_to_install():
    script = f"""
import importlib.util, sys
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name in {TRAIN_ONLY!r} else real(name, *a)
from lumix_core.train.cli import main
sys.exit(main(["fit", "--cache", "c", "--flux", "f", "--output", "o"]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "lumix-intrinsics[train]" in done.stderr and "opencv-python" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_suite_collects_in_a_checkout_named_like_the_pack(tmp_path):
    """A clone into ``custom_nodes/comfyui-lumix``: the root ``__init__.py`` (a package with relative imports,
    as ComfyUI imports it) must not be imported by pytest from a folder whose name is no Python identifier."""
    root = tmp_path / "comfyui-lumix"
    (root / "tests").mkdir(parents=True)
    (root / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (root / "__init__.py").write_text("from .nodes import NODE_CLASS_MAPPINGS  # only importable as a package\n")
    (root / "tests" / "conftest.py").write_text("")
    (root / "tests" / "test_one.py").write_text("def test_one():\n    assert True\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]

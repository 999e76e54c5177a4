"""Every experiment and tool script answers ``--help`` from the repository root.

The scripts are run by hand, rarely, so a moved module or a stale path would otherwise go unnoticed
until someone needs them. Run in-process (``runpy``) rather than one subprocess each: the torch
import is paid once. Scripts are found by glob, so a new one is covered without editing this file.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("experiments/*/run.py"), *ROOT.glob("tools/*.py")])
KNOWN = {f"experiments/{name}/run.py" for name in ("full_finetune", "object_normals", "one_step_losses",
                                                    "shape_learning", "stage1_captions", "stage1_variants",
                                                    "world_limits")}
KNOWN |= {f"tools/{name}.py" for name in ("make_decompose_sheet", "make_relight_figure", "make_vram_table",
                                         "make_workflow_thumbnails")}


def test_the_glob_finds_every_known_script():
    found = {p.relative_to(ROOT).as_posix() for p in SCRIPTS}
    assert KNOWN <= found, sorted(KNOWN - found)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_help_exits_0_and_prints_its_usage(script: Path, monkeypatch, capsys):
    rel = script.relative_to(ROOT).as_posix()
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [rel, "--help"])
    monkeypatch.setattr(sys, "path", list(sys.path))  # a script may add to it; keep that local
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(script), run_name="__main__")
    out, err = capsys.readouterr()
    assert exc.value.code in (0, None), err
    # The usage line names the script as it is run, so a moved script with a stale ``prog`` fails here.
    assert out.startswith(f"usage: python {rel}"), out[:200]

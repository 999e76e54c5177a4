"""docs/training.md's toy route runs as written, shrunk to a few scenes and steps.

Why execute it: the route is the one part of the training guide a reader can follow on a
CPU, so it must not drift from the commands. Each command of its code block is run in
process (a subprocess per command would spend most of the time importing torch), with
``--count`` and ``--steps`` divided down and fewer sampling steps for the validation sheet
and the demo, so the whole route takes seconds.
"""
from __future__ import annotations

import math
import re
import shlex
import shutil
from pathlib import Path

from lumix_core.cli import main as lumix_main
from lumix_core.toy.model import WEIGHTS_DIR
from lumix_core.train.cli import main as train_main
from lumix_core.world import dataset as world_dataset

ROOT = Path(__file__).resolve().parents[1]


def toy_route_commands() -> list[str]:
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    section = text.split("### Try it first on a CPU: the toy route", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    commands, pending = [], ""
    for line in block.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.count('"') % 2 == 0:  # a quoted python -c program spans lines
            if pending.strip() and not pending.lstrip().startswith("#"):
                commands.extend(c.strip() for c in pending.split("&&"))
            pending = ""
    return commands


def _shrink(program: str, args: list[str]) -> list[str]:
    out = list(args)
    for flag, factor in (("--count", 16), ("--steps", 20)):
        if flag in out:
            i = out.index(flag) + 1
            out[i] = str(math.ceil(int(out[i]) / factor))  # 40 and 50 steps: 2 and 3, so resume still trains
    sampling = {"lumix-train": ["--validation-steps", "1", "--validation-scenes", "1"], "lumix": ["--steps", "2"]}
    return out + sampling.get(program, [])


def test_the_toy_route_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = toy_route_commands()
    assert len(commands) == 8, commands
    for command in commands:
        if command.startswith("TOY=$("):
            assert "WEIGHTS_DIR" in command
            continue
        words = [w.replace("$TOY", str(WEIGHTS_DIR)) for w in shlex.split(command)]
        if words[0] == "OMP_NUM_THREADS=1":
            words = words[1:]
        program, args = words[0], _shrink(words[0], words[1:])
        if words[:3] == ["python", "-m", "lumix_core.world.dataset"]:
            assert world_dataset.main(_shrink("", words[3:])) == 0
        elif words[:2] == ["python", "-c"]:
            exec(compile(words[2], "<docs/training.md>", "exec"), {})
        elif program == "lumix-train":
            assert train_main(args) == 0, capsys.readouterr().err
        elif program == "lumix":
            assert lumix_main(args) == 0, capsys.readouterr().err
        elif program == "mkdir":
            Path(args[0]).mkdir()
        elif program == "cp":
            for src in args[:-1]:
                shutil.copy(src, args[-1])
        else:
            raise AssertionError(f"the test does not know how to run: {command}")
    assert (tmp_path / "toy" / "run" / "checkpoints" / "latest.txt").read_text().strip() == "step-00000003"
    assert len(list((tmp_path / "toy" / "demo_out").glob("lumix_demo_00001_*.png"))) == 6


def test_the_readme_demo_folder_is_ignored_by_git():
    assert "/demo_out/" in (ROOT / ".gitignore").read_text().splitlines()

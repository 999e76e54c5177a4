"""Resumable trainer checkpoints without pickle.

Why not ``torch.save``: it writes a pickle, and loading a pickle can run arbitrary code --
the project reads weights from safetensors only. A checkpoint is a folder
``checkpoints/step-00000100/`` holding

* ``adapter.safetensors`` -- written by :func:`lumix_core.model.checkpoint.save_adapter`, so any
  checkpoint loads as an adapter in lumix_core and in the ComfyUI loader node;
* ``optimizer.safetensors`` -- every optimizer state tensor as ``state.<param>.<name>``;
* ``rng-rank<r>.safetensors`` -- each process's torch (and CUDA) RNG state (uint8 tensors);
* ``trainer.json`` -- step, optimizer hyper-parameters and scalar state, scheduler state,
  numpy / python RNG states.

The folder is built under a temp name and renamed; ``checkpoints/latest.txt`` (rewritten
atomically) names the newest complete one.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..io.files import write_text_atomically
from ..io.safetensors_io import CheckpointError, atomic_save, load_tensors, read_header
from ..model.adapter import LumiXAdapter
from ..model.checkpoint import load_adapter, save_adapter

CHECKPOINTS = "checkpoints"
LATEST = "latest.txt"
ADAPTER_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
STATE_VERSION = 1


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.safetensors"


# --------------------------------------------------------------------------- optimizer
def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    meta = {"param_groups": state["param_groups"], "scalars": scalars,
            "tensor_keys": {str(pid): [n for n, v in e.items() if torch.is_tensor(v)]
                            for pid, e in state["state"].items()}}
    json.dumps(meta)  # fail here, loudly, if an optimizer ever carries a non-JSON value
    return tensors, meta


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for pid, names in meta["tensor_keys"].items():
        state[int(pid)] = {n: tensors[f"state.{pid}.{n}"] for n in names}
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------------- RNG
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Global RNG states: tensors (torch, CUDA, numpy key) and JSON (numpy scalars, python)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    py = random.getstate()
    meta = {"numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def seed_global_rngs(seed: int) -> None:
    """Seed torch, numpy and python's global generators (the trainer's own draws do not use them)."""
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    n = meta["numpy"]
    np.random.set_state((n["kind"], tensors["numpy"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


# ---------------------------------------------------------------------------- folders
@dataclass
class TrainerState:
    """What a checkpoint restores besides the adapter tensors."""

    step: int
    optimizer: dict
    scheduler: dict
    rng_tensors: Optional[dict[str, torch.Tensor]]
    rng_meta: Optional[dict[str, Any]]
    extra: dict[str, Any]


def checkpoints_dir(run: Path) -> Path:
    return Path(run) / CHECKPOINTS


def staging_dir(run: Path, step: int) -> Path:
    """Where a checkpoint is assembled before the rename (known to every rank)."""
    return checkpoints_dir(run) / f".{checkpoint_name(step)}.tmp"


def write_rng(folder: Path, rank: int) -> None:
    """Each process writes its own RNG state into the staging folder."""
    tensors, meta = capture_rng()
    atomic_save(tensors, folder / rng_file(rank), {"lumix.rng": json.dumps(meta)}, overwrite=True)


def commit_checkpoint(run: Path, step: int, adapter: LumiXAdapter, optimizer: torch.optim.Optimizer,
                      scheduler: Any, extra: dict[str, Any], keep: int,
                      adapter_metadata: Optional[dict[str, str]] = None) -> Path:
    """Rank 0: write adapter/optimizer/trainer files into the staging folder and rename it."""
    stage = staging_dir(run, step)
    stage.mkdir(parents=True, exist_ok=True)
    save_adapter(adapter, stage / ADAPTER_FILE, overwrite=True, extra_metadata=adapter_metadata)
    tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    atomic_save(tensors, stage / OPTIMIZER_FILE, {"lumix.state_version": str(STATE_VERSION)}, overwrite=True)
    sched = scheduler.state_dict()
    trainer = {"version": STATE_VERSION, "step": int(step), "optimizer": opt_meta, "scheduler": sched, **extra}
    write_text_atomically(stage / TRAINER_FILE, json.dumps(trainer, indent=1) + "\n")
    final = checkpoints_dir(run) / checkpoint_name(step)
    if final.exists():
        shutil.rmtree(final)
    stage.rename(final)
    write_text_atomically(checkpoints_dir(run) / LATEST, final.name + "\n")
    if keep > 0:
        done = sorted(p for p in checkpoints_dir(run).glob("step-*") if p.is_dir())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run: Path) -> Optional[Path]:
    pointer = checkpoints_dir(run) / LATEST
    if not pointer.is_file():
        return None
    folder = checkpoints_dir(run) / pointer.read_text(encoding="utf-8").strip()
    if not (folder / TRAINER_FILE).is_file():
        raise CheckpointError(f"{pointer} names {folder.name}, which is missing or incomplete")
    return folder


def load_checkpoint(folder: Path, adapter: LumiXAdapter, rank: int) -> TrainerState:
    """Load the adapter tensors in place and return the rest of the state."""
    try:
        trainer = json.loads((folder / TRAINER_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / TRAINER_FILE}: unreadable ({e})") from None
    if int(trainer.get("version", 0)) > STATE_VERSION:
        raise CheckpointError(f"{folder}: checkpoint version {trainer['version']} is newer than this trainer")
    loaded = load_adapter(folder / ADAPTER_FILE, maps=adapter.maps, rank=adapter.spec.rank)
    if loaded.spec != adapter.spec:
        raise CheckpointError(f"{folder / ADAPTER_FILE}: adapter layout {loaded.spec} differs from this run's "
                              f"{adapter.spec}")
    adapter.load_state_dict(loaded.state_dict(), strict=True)  # copies in place: optimizer refs stay valid
    header = read_header(folder / OPTIMIZER_FILE)
    opt_tensors = load_tensors(header)
    optimizer = unflatten_optimizer(opt_tensors, trainer["optimizer"])
    rng_tensors = rng_meta = None
    path = folder / rng_file(rank)
    if path.is_file():
        h = read_header(path)
        rng_tensors = load_tensors(h)
        rng_meta = json.loads(h.metadata["lumix.rng"])
    extra = {k: v for k, v in trainer.items() if k not in ("version", "step", "optimizer", "scheduler")}
    return TrainerState(int(trainer["step"]), optimizer, trainer["scheduler"], rng_tensors, rng_meta, extra)


def restore(state: TrainerState, optimizer: torch.optim.Optimizer, scheduler: Any,
            device: torch.device, warn: Callable[[str], None]) -> None:
    """Optimizer, scheduler and RNG from a loaded checkpoint."""
    opt = state.optimizer
    for entry in opt["state"].values():
        for k, v in entry.items():
            if torch.is_tensor(v) and k != "step":
                entry[k] = v.to(device)
    optimizer.load_state_dict(opt)
    scheduler.load_state_dict(dict(state.scheduler))
    if state.rng_tensors is not None and state.rng_meta is not None:
        restore_rng(state.rng_tensors, state.rng_meta)
    else:
        warn("checkpoint has no RNG state for this process (different process count?); global RNGs not restored "
             "(training randomness is per sample and does not depend on them)")

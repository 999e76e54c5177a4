"""``lumix decompose --sequence FRAME ... --out DIR``: frames decomposed as one shot with the toy.

The frames, in the order given, are one shot: decomposed chunk by chunk
(:func:`lumix_core.shot.chunks.decompose_shot`, ``--chunk`` frames per model call), stabilised for
the camera (:func:`lumix_core.shot.stabilize.stabilize_shot`, ``--camera``), then written twice:
``DIR/<stem>_<map>.png`` per frame as the per-image mode writes them (never overwritten: a counter
is added), and the EXR sequence ``DIR/<shot>/<shot>.####.exr`` (:func:`lumix_core.io.sequence.save_sequence`,
a versioned folder if one of that name exists), the shot's name from ``--name`` or the first
frame's stem. Every frame must have the first good frame's size; a bad frame is named on one line
and left out, the others still make the shot.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..io.export import resolve_prefix
from ..io.sequence import SavedSequence, save_sequence
from ..shot.chunks import Progress, decompose_shot
from ..shot.stabilize import DEFAULT_CAMERA, check_camera, stabilize_shot
from .backbone import SAMPLE_STEPS
from .decompose import (
    SEQUENCE_CHUNK,
    SEQUENCE_START_FRAME,
    Decomposition,
    adapter_words,
    load_model,
    loaded_photos,
    print_results,
    sampling_text,
    settings,
    write_pngs,
)
from .model import MODEL_TEXT, ToyLumiX
from .shot import toy_chunk_decomposer

__all__ = ["ShotResult", "load_frames", "progress_bar", "run_sequence", "main"]


@dataclass
class ShotResult:
    """What a sequence run wrote: the per-frame PNG sets, the EXR sequence, the camera used."""

    frames: list[Decomposition] = field(default_factory=list)
    sequence: Optional[SavedSequence] = None
    camera: str = DEFAULT_CAMERA


def load_frames(inputs: Sequence[str]) -> tuple[list[str], Optional[torch.Tensor], list[tuple[str, str]]]:
    """``(good inputs, frames [T, H, W, 3] or None, failed)``: every frame the size of the first good one."""
    good, frames, failed = [], [], []
    for raw, photo in loaded_photos(inputs, failed):
        if frames and photo.shape != frames[0].shape:
            h, w = frames[0].shape[:2]
            failed.append((raw, f"is {photo.shape[1]} x {photo.shape[0]} pixels; the shot's frames are {w} x {h} "
                                f"(the size of {good[0]}); resize it or leave it out"))
            continue
        good.append(raw)
        frames.append(photo)
    return good, (torch.stack(frames) if frames else None), failed


def progress_bar(total: int) -> tuple[Progress, Callable[[], None]]:
    """``(update, close)`` over ``total`` frames: tqdm where it is installed (the train extra), else
    one line per chunk on stderr."""
    try:
        from tqdm import tqdm
    except ImportError:
        def update(done: int, _total: int) -> None:
            print(f"decomposed {done}/{total} frames", file=sys.stderr)
        return update, lambda: None
    bar = tqdm(total=total, desc="decompose", unit="frame", dynamic_ncols=True)

    def advance(done: int, _total: int) -> None:
        bar.update(done - bar.n)

    return advance, bar.close


def run_sequence(model: ToyLumiX, inputs: Sequence[str], out: "str | Path", *, name: Optional[str] = None,
                 prompt: str = "", steps: int = SAMPLE_STEPS, seed: int = 0, chunk: int = SEQUENCE_CHUNK,
                 camera: str = DEFAULT_CAMERA, start_frame: int = SEQUENCE_START_FRAME,
                 progress: Optional[Callable[[int], tuple[Progress, Callable[[], None]]]] = None,
                 ) -> tuple[ShotResult, list[tuple[str, str]]]:
    """Decompose ``inputs`` as one shot and write it (module docstring); returns ``(result, failed)``."""
    good, frames, failed = load_frames(inputs)
    result = ShotResult(camera=camera)
    if frames is None:
        return result, failed
    shot = name or Path(good[0]).stem
    resolve_prefix(out, shot)  # a name that cannot be a sequence is refused before the model runs
    check_camera(camera)
    update, close = (progress or progress_bar)(len(good))
    try:
        maps = decompose_shot(frames, toy_chunk_decomposer(model, prompt=prompt, steps=steps, seed=seed), chunk,
                              progress=update)
    finally:
        close()
    maps = stabilize_shot(maps, camera)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common = {"lumix.prompt": prompt, "lumix.model": MODEL_TEXT, "lumix.camera": camera,
              **sampling_text(model, steps, seed)}
    for i, raw in enumerate(good):
        text = {**common, "lumix.source": Path(raw).name, "lumix.shot": shot, "lumix.frame": str(start_frame + i)}
        result.frames.append(write_pngs(out, Path(raw), {m: batch[i] for m, batch in maps.items()}, text))
    extra = {k: v for k, v in common.items() if k not in ("lumix.prompt", "lumix.seed")}
    result.sequence = save_sequence(maps, out, shot, start_frame=start_frame, prompt=prompt,
                                    seed=None if model.one_step else seed, extra=extra)
    return result, failed


def main(args: argparse.Namespace) -> int:
    """Run ``lumix decompose --sequence``; exit status 0, 1 (some frames failed) or 2 (usage)."""
    from ..cli_args import write_error
    from .text import PromptError

    out = args.out
    chosen = settings(args)
    if isinstance(chosen, int):
        return chosen
    start = time.perf_counter()
    try:
        model = load_model(chosen.weights, chosen.fast)
        if args.prompt:
            model.text.check_prompt(args.prompt)
        result, failed = run_sequence(
            model, args.sequence, out, name=args.name, prompt=args.prompt, steps=chosen.steps, seed=chosen.seed,
            chunk=args.chunk or SEQUENCE_CHUNK, camera=args.camera or DEFAULT_CAMERA,
            start_frame=SEQUENCE_START_FRAME if args.start_frame is None else args.start_frame)
    except (PromptError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"lumix decompose: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"lumix decompose: {write_error(out, e)}", file=sys.stderr)
        return 2
    print_results(result.frames, failed)
    if result.sequence is not None:
        seq = result.sequence
        print(f"sequence -> {seq.folder}/ ({seq.files[0].filename} ... {seq.files[-1].filename})")
        if seq.note:
            print(f"  note: {seq.note}")
    print(f"{len(result.frames)} frames decomposed as one shot ({adapter_words(chosen)}, camera {result.camera}), "
          f"{len(failed)} failed, {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0

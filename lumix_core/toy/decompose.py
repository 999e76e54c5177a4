"""``lumix decompose IMAGE ... --out DIR``: a photo's five maps from the shipped toy model.

The photo goes where the release puts it: encoded into the color slot, fed clean at t = 0
(:meth:`lumix_core.toy.model.ToyLumiX.generate` with ``color=``). No caption by default, as
a user decomposing a photo has none; ``--prompt`` may add one in the toy's vocabulary.

Which adapter: by default the folder's one-step adapter (:data:`.model.ONE_STEP_ADAPTER_FILE`,
trained with ``lumix-train fit --objective one-step``): one deterministic model call per photo,
and on the toy the only adapter that reads its photo (docs/toy_model.md). ``--steps`` or
``--seed`` ask for sampling, so they select the multi-step adapter: the photo at every step,
never updated, while the other maps are denoised from one shared noise. A folder without a
one-step adapter is sampled too, and the command says so. ``--fast`` insists on the one-step
adapter (an error where there is none).

Sizes: any image PIL reads (grey, palette, alpha and EXIF-rotated files included) is turned
into RGB and resized to the model's 64 x 64 -- the whole frame, so a non-square photo is
squeezed, not cropped -- and every map is resized back to the input's size, so the maps lie
pixel on pixel over the photo (normals are renormalised after the resize). The color map
written is the photo as the model saw it (through the toy VAE), resized back.

Files: ``DIR/<stem>_<map>.png`` (8-bit, with the settings in PNG text chunks). Nothing is
overwritten: if any of an image's five names exists, the whole set gets the first free
counter, ``<stem>_<n>_<map>.png``, and the command says so. A bad input (missing, a folder,
not an image, unreadable) gets one line on stderr; the other images are still decomposed
and the exit status is 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..conventions import renormalize_normals
from ..io.files import write_bytes_atomically
from ..io.png import encode_png
from .backbone import IMAGE_SIZE, SAMPLE_STEPS
from .model import MODEL_TEXT, ONE_STEP_ADAPTER_FILE, WEIGHTS_DIR, ToyLumiX

#: ``--sequence`` defaults: frames per model call, number of the first frame.
SEQUENCE_CHUNK = 8
SEQUENCE_START_FRAME = 1
#: Largest input side we read (a guard against decompression bombs; far above any photo).
MAX_SIDE = 16384


class InputError(ValueError):
    """An input file that cannot be decomposed, with the reason in words."""


@dataclass
class Decomposition:
    source: Path
    files: list[Path] = field(default_factory=list)
    note: Optional[str] = None  # e.g. that a counter was added


def load_photo(path: "str | os.PathLike[str]") -> torch.Tensor:
    """``[H, W, 3]`` float in [0, 1] from any image file PIL reads, or an :class:`InputError`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise InputError("no such file")
    if p.is_dir():
        raise InputError("is a folder, not an image (pass the image files, e.g. DIR/*.png)")
    try:
        with Image.open(p) as img:
            if max(img.size) > MAX_SIDE:
                raise InputError(f"is {img.size[0]} x {img.size[1]} pixels; the limit is {MAX_SIDE} per side")
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError("is not an image PIL can read (PNG, JPEG, WebP, TIFF, BMP ...)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot be read: {e}") from None
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise InputError("has no pixels")
    return torch.from_numpy(rgb.copy())


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[H, W, C]`` -> ``[height, width, C]``: area averaging down, bilinear up."""
    x = image.permute(2, 0, 1)[None].float()
    shrinking = height < image.shape[0] and width < image.shape[1]
    mode = {"mode": "area"} if shrinking else {"mode": "bilinear", "align_corners": False}
    return F.interpolate(x, size=(height, width), **mode)[0].permute(1, 2, 0).clamp(0.0, 1.0)


def decompose_photo(model: ToyLumiX, photo: torch.Tensor, *, prompt: str = "", steps: int = SAMPLE_STEPS,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """The maps of one photo ``[H, W, 3]``, each ``[H, W, 3]`` in [0, 1] at the photo's size."""
    h, w = photo.shape[:2]
    small = resize_image(photo, IMAGE_SIZE, IMAGE_SIZE)
    with torch.inference_mode():
        maps = model.generate([prompt], seed=seed, steps=steps, true_cfg=1.0, color=small[None])
    return {name: at_size(name, m.image[0], h, w) for name, m in maps.items()}


def at_size(name: str, image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """One finished map ``[h, w, 3]`` resized to the photo's ``height x width`` (normals renormalised)."""
    full = resize_image(image, height, width)
    return renormalize_normals(full)[0] if name == "normal" else full


def load_model(weights: "str | os.PathLike[str]" = WEIGHTS_DIR, fast: bool = False) -> ToyLumiX:
    """The toy of ``weights``; ``fast``: with its one-step adapter instead of the multi-step one."""
    if not fast:
        return ToyLumiX.load(weights)
    path = Path(weights) / ONE_STEP_ADAPTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{Path(weights)}: no {ONE_STEP_ADAPTER_FILE}, so --fast has no one-step adapter to "
                                "use; train one with lumix-train fit --objective one-step, or drop --fast")
    model = ToyLumiX.load(weights, adapter=path)
    if not model.one_step:
        raise ValueError(f"{path} is not a one-step adapter (its metadata says it was trained for flow matching)")
    return model


def output_paths(out: Path, stem: str, names: Sequence[str]) -> tuple[dict[str, Path], Optional[str]]:
    """``{map: path}`` for one image: ``<stem>_<map>.png``, or the first counter that frees all five."""
    def paths(tag: str) -> dict[str, Path]:
        return {n: out / f"{tag}_{n}.png" for n in names}

    chosen = paths(stem)
    if not any(p.exists() for p in chosen.values()):
        return chosen, None
    counter = 1
    while any(p.exists() for p in paths(f"{stem}_{counter}").values()):
        counter += 1
    return paths(f"{stem}_{counter}"), f"{stem}_<map>.png exists; wrote {stem}_{counter}_<map>.png instead"


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def sampling_text(model: ToyLumiX, steps: int, seed: int) -> dict[str, str]:
    """The PNG/EXR text of how the maps were sampled: one step, or the seed and step count."""
    if model.one_step:
        return {"lumix.steps": "1 (one-step adapter)"}
    return {"lumix.seed": str(seed), "lumix.steps": str(steps)}


def write_pngs(out: Path, source: Path, maps: Mapping[str, torch.Tensor], text: Mapping[str, str]) -> Decomposition:
    """One image's maps ``{map: [H, W, C]}`` as ``out/<stem>_<map>.png`` (never overwritten: see
    :func:`output_paths`), ``text`` and the map's name in each file."""
    paths, note = output_paths(out, source.stem, list(maps))
    result = Decomposition(source, note=note)
    for name, image in maps.items():
        data = encode_png(_to_uint8(image), {**text, "lumix.map": name})
        result.files.append(write_bytes_atomically(paths[name], data, overwrite=False))
    return result


def loaded_photos(inputs: Sequence[str], failed: list[tuple[str, str]]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(input, photo)`` for each input that loads, in order; the others go to ``failed`` as ``(input, reason)``."""
    for raw in inputs:
        try:
            photo = load_photo(raw)
        except InputError as e:
            failed.append((raw, str(e)))
            continue
        yield raw, photo


def run_decompose(inputs: Sequence[str], out: "str | os.PathLike[str]", *, prompt: str = "",
                  steps: int = SAMPLE_STEPS, seed: int = 0, weights: "str | os.PathLike[str]" = WEIGHTS_DIR,
                  model: Optional[ToyLumiX] = None,
                  fast: bool = False) -> tuple[list[Decomposition], list[tuple[str, str]]]:
    """Decompose every input; returns ``(done, failed)`` with ``failed`` = ``(input, reason)``.
    ``fast``: with the folder's one-step adapter (one model call per photo)."""
    model = model or load_model(weights, fast)
    if prompt:
        model.text.check_prompt(prompt)
    out = Path(out)
    done, failed = [], []
    for raw, photo in loaded_photos(inputs, failed):
        maps = decompose_photo(model, photo, prompt=prompt, steps=steps, seed=seed)
        out.mkdir(parents=True, exist_ok=True)
        text = {"lumix.source": Path(raw).name, "lumix.prompt": prompt, "lumix.model": MODEL_TEXT,
                **sampling_text(model, steps, seed)}
        done.append(write_pngs(out, Path(raw), maps, text))
    return done, failed


def print_results(done: Sequence[Decomposition], failed: Sequence[tuple[str, str]]) -> None:
    """Each input's written files (and note) on stdout, each failed input with its reason on stderr."""
    for d in done:
        print(f"{d.source} -> {', '.join(str(f) for f in d.files)}")
        if d.note:
            print(f"  note: {d.note}")
    for raw, reason in failed:
        print(f"lumix decompose: {raw}: {reason}", file=sys.stderr)


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``decompose`` sub-command of ``lumix`` (:mod:`lumix_core.cli`)."""
    p = sub.add_parser("decompose", help="albedo, irradiance, color, depth and normal maps of photos (toy model)",
                       description="Decompose photos into albedo, irradiance, color, depth and normal maps with the "
                                   "toy LumiX model shipped in the package (color pinned, no caption). Writes "
                                   "OUT/<stem>_<map>.png at the input's size; never overwrites (a counter is added).")
    from ..cli_args import non_negative_int, output_folder, positive_int, seed_value, thread_count
    from ..shot.stabilize import CAMERAS, DEFAULT_CAMERA

    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (any format PIL reads)")
    p.add_argument("--sequence", nargs="+", metavar="FRAME",
                   help="decompose these frames, in this order, as one shot instead of one image at a time: also "
                        "writes the EXR sequence OUT/<shot>/<shot>.####.exr (docs/shots.md)")
    p.add_argument("--name", help="with --sequence: the shot's name (default: the first frame's stem)")
    p.add_argument("--camera", choices=CAMERAS,
                   help="with --sequence: moving (flow-guided blending of neighbouring frames, needs opencv), "
                        "locked-off (one albedo, normal and depth map for the whole shot: a still camera, only "
                        f"the light moving) or none (default {DEFAULT_CAMERA})")
    p.add_argument("--chunk", type=positive_int,
                   help=f"with --sequence: frames per model call (default {SEQUENCE_CHUNK}); memory grows with it, "
                        "the maps do not change")
    p.add_argument("--start-frame", type=non_negative_int,
                   help=f"with --sequence: number of the first frame in the EXR names (default {SEQUENCE_START_FRAME})")
    p.add_argument("--out", type=output_folder, required=True, help="output folder (made if missing)")
    p.add_argument("--prompt", default="", help="optional caption in the toy's vocabulary (default: none)")
    p.add_argument("--fast", action="store_true",
                   help="insist on the one-step adapter (the default wherever the folder has one): one model call "
                        "per photo; an error if the folder has none")
    p.add_argument("--steps", type=positive_int, default=None,
                   help=f"sample with the multi-step adapter in this many Euler steps instead (default {SAMPLE_STEPS} "
                        "where the folder has no one-step adapter); about 20x slower, and on the toy it does not "
                        "read its photo")
    p.add_argument("--seed", type=seed_value, default=None,
                   help="sample with the multi-step adapter from this noise seed, 0 to 2**64-1 (default 0)")
    p.add_argument("--weights", default=None, help="toy model folder (default: the shipped weights)")
    p.add_argument("--threads", type=thread_count, default=1, help="CPU threads for torch (default %(default)s)")
    return p


@dataclass(frozen=True)
class Settings:
    """What the parsed arguments ask for: the model folder, which adapter, and how to sample."""

    weights: Path
    fast: bool
    steps: int
    seed: int


def settings(args: argparse.Namespace) -> "Settings | int":
    """The :class:`Settings` of the parsed ``decompose`` arguments, or exit status 2 after one line on
    stderr for a usage error; sets the thread count."""
    if bool(args.images) == bool(args.sequence):
        print("lumix decompose: give image files (each decomposed on its own) or --sequence FRAME ... (one shot), "
              "not both" if args.images else "lumix decompose: give the image files to decompose, or --sequence "
              "FRAME ... for the frames of a shot", file=sys.stderr)
        return 2
    shot_only = [flag for flag, value in (("--name", args.name), ("--camera", args.camera), ("--chunk", args.chunk),
                                          ("--start-frame", args.start_frame)) if value is not None]
    if shot_only and not args.sequence:
        print(f"lumix decompose: {', '.join(shot_only)} only apply with --sequence; add --sequence before the "
              "frames, or drop them", file=sys.stderr)
        return 2
    sampled = args.steps is not None or args.seed is not None
    if args.fast and sampled:
        print("lumix decompose: --fast decomposes in one deterministic step, so --steps and --seed do not apply; "
              "drop them, or drop --fast to sample with steps and a seed", file=sys.stderr)
        return 2
    weights = Path(args.weights or WEIGHTS_DIR)
    fast = args.fast or (not sampled and (weights / ONE_STEP_ADAPTER_FILE).is_file())
    steps = SAMPLE_STEPS if args.steps is None else args.steps
    if not fast and not sampled:
        print(f"note: {weights} has no {ONE_STEP_ADAPTER_FILE}; sampling with its multi-step adapter in {steps} steps")
    torch.set_num_threads(args.threads)
    return Settings(weights, fast, steps, 0 if args.seed is None else args.seed)


def adapter_words(s: Settings) -> str:
    return ("the one-step adapter" if s.fast
            else f"the multi-step adapter, {s.steps} step{'s' * (s.steps != 1)}, seed {s.seed}")


def main(args: argparse.Namespace) -> int:
    """Run the parsed ``decompose`` command (one image at a time; ``--sequence`` runs
    :func:`.decompose_sequence.main`); exit status 0, 1 (some inputs failed) or 2 (usage)."""
    from ..cli_args import write_error
    from .text import PromptError

    out = args.out  # checked by the parser: a folder we can make and write into
    chosen = settings(args)
    if isinstance(chosen, int):
        return chosen
    weights, fast, steps, seed = chosen.weights, chosen.fast, chosen.steps, chosen.seed
    start = time.perf_counter()
    try:
        done, failed = run_decompose(args.images, out, prompt=args.prompt, steps=steps, seed=seed,
                                     weights=weights, fast=fast)
    except (PromptError, FileNotFoundError, ValueError) as e:
        print(f"lumix decompose: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the checked --out failed while writing (disk full, remounted read-only)
        print(f"lumix decompose: {write_error(out, e)}", file=sys.stderr)
        return 2
    print_results(done, failed)
    elapsed = time.perf_counter() - start
    print(f"{len(done)} decomposed ({adapter_words(chosen)}), {len(failed)} failed, {elapsed:.1f} s")
    return 1 if failed else 0


"""Write synthetic-world scenes to disk in the release's training-data layout.

Why the release layout: the training script reads Hypersim-style folders
(``ROOT/<folder>/<id>_<folder>.png`` + ``ROOT/captions_blip2/<id>_color.json``), so a
synthetic set in the same layout exercises exactly the code path real data takes. Next to
it, ``ROOT/ground_truth/<id>.npz`` keeps the raw float buffers, because 8-bit PNGs lose
what the metrics need (metric depth, exact unit normals, linear irradiance above 1).

Every file is written to a temporary name in its folder and renamed into place, so a
crash never leaves a half-written PNG that a later training run would trip over.

CLI::

    python -m lumix_core.world.dataset --out DIR --count N --seed S --size 64 [--sheet PNG]
"""
from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..cli_args import OneLineParser, output_folder, write_error
from ..io.files import write_bytes_atomically
from ..io.png import encode_png
from ..latents import SIZE_MULTIPLE, check_size, nearest_size
from ..maps import RELEASE
from .render import RenderResult, render
from .scene import sample_scene

__all__ = [
    "CAPTION_FOLDER",
    "GROUND_TRUTH_FOLDER",
    "MANIFEST_NAME",
    "scene_seed",
    "scene_id",
    "write_world_dataset",
    "contact_sheet",
    "main",
]

CAPTION_FOLDER = "captions_blip2"
GROUND_TRUTH_FOLDER = "ground_truth"
MANIFEST_NAME = "world_manifest.json"


def scene_seed(seed: int, index: int) -> int:
    """Seed of scene ``index`` in a dataset drawn with ``seed``: independent streams per
    (seed, index) pair, so datasets with different seeds do not share scenes."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)


def scene_id(index: int) -> str:
    return f"{index:06d}"


def _to_uint8(img01: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(img01, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def _npz_bytes(result: RenderResult, seed: int) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        depth=result.depth,
        normal=result.normal,
        albedo=result.albedo,
        irradiance=result.irradiance,
        color=result.color,
        hit=result.hit,
        object_id=result.object_id,
        seed=np.int64(seed),
        spec_json=np.array(json.dumps(result.spec.to_dict())),
    )
    return buf.getvalue()


def write_world_dataset(root: str | os.PathLike, count: int, seed: int = 0, size: int = 64,
                        overwrite: bool = False) -> list[str]:
    """Render ``count`` scenes into ``root`` in the release layout; return their ids.

    Per scene ``<id>``: one 8-bit RGB PNG per release map in
    ``root/<RELEASE folder name>/<id>_<folder>.png`` (depth replicated to 3 channels),
    ``root/captions_blip2/<id>_color.json`` = ``{"caption": ...}``, and
    ``root/ground_truth/<id>.npz`` with float32 ``depth`` (camera z), ``normal`` (unit,
    camera space), ``albedo``, ``irradiance``, ``color`` (linear), ``hit``, ``object_id``,
    the scene ``seed`` and ``spec_json``. ``root/world_manifest.json`` records how the set
    was drawn.

    A non-empty ``root`` is refused unless ``overwrite`` is set; then files of the same
    names are replaced, other files are left alone (the manifest lists this run's ids).
    ``size`` must be a multiple of 16, as for everything FLUX and ``lumix-train prepare`` read.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    check_size(size, size)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} is not empty; choose a new or empty folder, or write into it anyway with "
                              "--overwrite (scenes of the same ids are replaced, other files are kept)")
    folders = [RELEASE.folder_name(m) for m in RELEASE.names]
    for sub in folders + [CAPTION_FOLDER, GROUND_TRUTH_FOLDER]:
        (root / sub).mkdir(parents=True, exist_ok=True)

    ids, seeds = [], []
    for i in range(count):
        sid, s = scene_id(i), scene_seed(seed, i)
        result = render(sample_scene(s), size)
        for name, img in result.encode(RELEASE).items():
            folder = RELEASE.folder_name(name)
            write_bytes_atomically(root / folder / f"{sid}_{folder}.png", encode_png(_to_uint8(img)))
        cap = json.dumps({"caption": result.caption}).encode()
        write_bytes_atomically(root / CAPTION_FOLDER / f"{sid}_color.json", cap)
        write_bytes_atomically(root / GROUND_TRUTH_FOLDER / f"{sid}.npz", _npz_bytes(result, s))
        ids.append(sid)
        seeds.append(s)
    manifest = {"generator": "lumix_core.world", "seed": int(seed), "count": int(count), "size": int(size),
                "maps": list(RELEASE.names), "ids": ids, "scene_seeds": seeds}
    write_bytes_atomically(root / MANIFEST_NAME, json.dumps(manifest, indent=1).encode())
    return ids


def contact_sheet(results: Sequence[RenderResult]) -> np.ndarray:
    """uint8 image with one row per scene and the release maps left to right, for eyeballing."""
    rows = [np.concatenate(list(r.encode(RELEASE).values()), axis=1) for r in results]
    return _to_uint8(np.concatenate(rows, axis=0))


def image_side(text: str) -> int:
    """``--size``: checked here, not first by ``lumix-train prepare`` after the set is written."""
    try:
        side = int(text)
    except ValueError:
        side = 0
    try:
        check_size(side, side)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"the image side must be a positive multiple of {SIZE_MULTIPLE} pixels, as FLUX and lumix-train prepare "
            f"need; got '{text}', use e.g. --size {nearest_size(side)}") from None
    return side


def main(argv: Sequence[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m lumix_core.world.dataset", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=output_folder, help="dataset root (must be empty unless --overwrite)")
    ap.add_argument("--count", type=int, required=True, help="number of scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=image_side, default=64, help=f"image side in pixels, a multiple of {SIZE_MULTIPLE}")
    ap.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    ap.add_argument("--sheet", help="also save a contact sheet of the first 8 scenes to this PNG")
    args = ap.parse_args(argv)
    sheet_path = Path(args.sheet) if args.sheet else None
    if sheet_path is not None and sheet_path.exists() and not args.overwrite:
        ap.error(f"{sheet_path} exists; pass --overwrite to replace it")
    try:
        ids = write_world_dataset(args.out, args.count, args.seed, args.size, args.overwrite)
        if sheet_path is not None and args.count > 0:
            sheet = contact_sheet([render(sample_scene(scene_seed(args.seed, i)), args.size)
                                   for i in range(min(8, args.count))])
            write_bytes_atomically(sheet_path, encode_png(sheet))
    except (FileExistsError, NotADirectoryError, ValueError) as err:
        ap.error(str(err))
    except OSError as err:
        ap.error(write_error(args.out, err))
    print(f"wrote {len(ids)} scenes to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

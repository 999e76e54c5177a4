"""Reading a training dataset in the release layout, with a clear message per bad file.

Layout (the release's Hypersim renders)::

    ROOT/<map folder>/<id>_<map folder>.png      e.g. diffuse_reflectance/ai_001_cam0_diffuse_reflectance.png
    ROOT/captions_blip2/<id>_color.json          {"caption": "..."}

Map folders may use the release spelling (:meth:`MapSet.folder_name`) or the canonical
name (``albedo``); files may also be plain ``<id>.png`` (or .jpg); captions may also be a
plain ``ROOT/captions/<id>.txt``. Why we check so much before encoding: the encoders take
minutes to load and the encode takes longer, so every problem of the dataset is collected
and reported at once, before anything heavy runs -- and nothing is dropped silently.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..maps import ALIASES, MapSet, canonical

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Caption locations, tried in order: (folder, file name pattern, kind).
CAPTION_SOURCES = (("captions_blip2", "{id}_color.json", "json"),
                   ("captions_blip2", "{id}.json", "json"),
                   ("captions", "{id}.txt", "txt"),
                   ("captions", "{id}.json", "json"))


@dataclass(frozen=True)
class Problem:
    """One bad file (or missing file) of one scene."""

    scene_id: str
    path: Optional[Path]
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path is not None else ""
        return f"scene '{self.scene_id}': {where}{self.message}"

    def to_dict(self) -> dict:
        return {"id": self.scene_id, "path": None if self.path is None else str(self.path), "message": self.message}


class DatasetError(ValueError):
    """The dataset has problems; ``problems`` lists every one of them."""

    def __init__(self, problems: list[Problem], hint: str = "") -> None:
        self.problems = list(problems)
        shown = "\n  ".join(str(p) for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{len(self.problems)} problem(s) in the dataset:\n  {shown}{more}{hint}")


@dataclass(frozen=True)
class SceneFiles:
    """The files of one scene: one image per map (canonical name -> path) and its caption."""

    scene_id: str
    images: dict[str, Path]
    caption: Optional[Path]


def folder_candidates(maps: MapSet, name: str) -> list[str]:
    """Folder names accepted for a map: release spelling first, then the canonical and alias names."""
    key = canonical(name)
    names = [maps.folder_name(key), key] + [alias for alias, target in ALIASES.items() if target == key]
    return list(dict.fromkeys(names))


def find_map_folder(root: Path, maps: MapSet, name: str) -> Path:
    """The one folder holding map ``name``; a clear error if none or several exist."""
    found = [root / c for c in folder_candidates(maps, name) if (root / c).is_dir()]
    if not found:
        raise DatasetError([Problem("*", root, f"no folder for the '{name}' map (looked for "
                                               f"{', '.join(folder_candidates(maps, name))})")])
    if len(found) > 1:
        raise DatasetError([Problem("*", root, f"several folders hold the '{name}' map: "
                                               f"{', '.join(p.name for p in found)}; keep one")])
    return found[0]


def scene_id_of(file: Path, folder: Path, map_name: str) -> str:
    """``<id>_<folder>.png`` / ``<id>_<map>.png`` -> ``<id>``; a plain ``<id>.png`` -> ``<id>``."""
    stem = file.stem
    for suffix in dict.fromkeys((folder.name, map_name)):
        if stem.endswith("_" + suffix) and len(stem) > len(suffix) + 1:
            return stem[: -len(suffix) - 1]
    return stem


def _caption_path(root: Path, scene_id: str) -> Optional[Path]:
    for folder, pattern, _ in CAPTION_SOURCES:
        p = root / folder / pattern.format(id=scene_id)
        if p.is_file():
            return p
    return None


def scan_dataset(root: "str | Path", maps: MapSet) -> tuple[list[SceneFiles], list[Problem]]:
    """Find every scene id and its files; problems are missing maps, captions and duplicates."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError([Problem("*", root, "dataset folder does not exist")])
    folders = {name: find_map_folder(root, maps, name) for name in maps.names}
    files: dict[str, dict[str, Path]] = {name: {} for name in maps.names}
    problems: list[Problem] = []
    for name, folder in folders.items():
        for f in sorted(folder.iterdir()):
            if f.name.startswith(".") or not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            sid = scene_id_of(f, folder, name)
            if sid in files[name]:
                problems.append(Problem(sid, f, f"two '{name}' images for this scene "
                                                f"({files[name][sid].name} and {f.name}); keep one"))
                continue
            files[name][sid] = f
    ids = sorted(set().union(*(set(v) for v in files.values())))
    if not ids:
        raise DatasetError([Problem("*", root, "no images found (expected e.g. "
                                               f"{folders[maps.names[0]].name}/<id>_{folders[maps.names[0]].name}.png)")])
    duplicated = {p.scene_id for p in problems}
    scenes = []
    for sid in ids:
        missing = [n for n in maps.names if sid not in files[n]]
        for n in missing:
            f = folders[n]
            problems.append(Problem(sid, f / f"{sid}_{f.name}.png", f"missing the '{n}' map"))
        caption = _caption_path(root, sid)
        if caption is None:
            problems.append(Problem(sid, root / "captions_blip2" / f"{sid}_color.json",
                                    "missing caption (or captions/<id>.txt)"))
        if not missing and caption is not None and sid not in duplicated:
            scenes.append(SceneFiles(sid, {n: files[n][sid] for n in maps.names}, caption))
    return scenes, problems


def read_caption(path: Path) -> str:
    """The caption text; ``ValueError`` with the reason for invalid JSON, no key, or empty text."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable caption file ({e})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"caption file is not valid JSON ({e})") from None
        if not isinstance(data, dict) or "caption" not in data:
            raise ValueError('caption JSON has no "caption" key (expected {"caption": "..."})')
        text = data["caption"]
        if not isinstance(text, str):
            raise ValueError(f'"caption" must be a string, got {type(text).__name__}')
    else:
        text = raw
    text = text.strip()
    if not text:
        raise ValueError("empty caption")
    return text


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header; ``ValueError`` if it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise ValueError(f"unreadable image ({type(e).__name__}: {e})") from None


def read_image(path: Path) -> np.ndarray:
    """``[H, W, 3]`` float32 in [0, 1] from 8- or 16-bit grey/RGB/RGBA files (alpha dropped)."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)  # np.fromfile + imdecode: non-ASCII paths work too
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR) if data.size else None
    if img is None:
        raise ValueError("unreadable image (decoding failed: truncated or not an image)")
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    elif img.dtype == np.float32:
        scale = 1.0
    else:
        raise ValueError(f"unsupported pixel type {img.dtype} (use 8- or 16-bit PNG)")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 2:  # grey + alpha
        img = np.repeat(img[:, :, :1], 3, axis=2)
    else:
        img = img[:, :, 2::-1]  # BGR(A) -> RGB
    return np.ascontiguousarray(img, dtype=np.float32) / scale


def check_scene(scene: SceneFiles) -> tuple[Optional[str], Optional[tuple[int, int]], list[Problem]]:
    """Cheap checks of one scene (caption, image headers, equal sizes): ``(caption, (w, h), problems)``."""
    problems: list[Problem] = []
    caption = None
    try:
        caption = read_caption(scene.caption)  # type: ignore[arg-type]
    except ValueError as e:
        problems.append(Problem(scene.scene_id, scene.caption, str(e)))
    sizes: dict[str, tuple[int, int]] = {}
    for name, path in scene.images.items():
        try:
            sizes[name] = image_size(path)
        except ValueError as e:
            problems.append(Problem(scene.scene_id, path, str(e)))
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{n} {w}x{h}" for n, (w, h) in sizes.items())
        first = next(iter(sizes))
        odd = [n for n, s in sizes.items() if s != sizes[first]]
        problems.append(Problem(scene.scene_id, scene.images[odd[0]],
                                f"image sizes disagree within the scene ({listing}); all maps of a scene must be "
                                "pixel-aligned"))
    size = next(iter(sizes.values())) if sizes and not problems else None
    return caption, size, problems

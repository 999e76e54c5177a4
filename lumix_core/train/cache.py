"""The encoded dataset: safetensors shards + ``manifest.json``, written once, read by ``fit``.

Why a cache: FLUX's VAE and text encoders are ~10 GB and slow; encoding a few hundred
scenes once means ``fit`` needs only the transformer in memory. Per scene ``n`` a shard
holds ``scene.{n}.latents [M, C, h, w]`` (model space, maps in group order),
``scene.{n}.txt [Lt, ctx]`` and ``scene.{n}.y [vec]``; ``empty.safetensors`` holds the
empty-caption conditioning used for caption dropout. The whole folder is built under a
temp name and renamed into place, so a cache is complete or absent.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from ..io.files import write_text_atomically
from ..io.safetensors_io import CheckpointError, atomic_save, load_tensors, read_header
from ..maps import MapSet
from .folders import FolderBuilder

MANIFEST = "manifest.json"
CACHE_FORMAT = "lumix-train-cache"
CACHE_VERSION = 1
EMPTY_FILE = "empty.safetensors"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class SceneRecord:
    """Where one scene lives and its shapes (latent ``height``/``width``, text tokens)."""

    index: int
    scene_id: str
    shard: str
    height: int
    width: int
    text_tokens: int
    caption: str

    def to_dict(self) -> dict:
        return {"id": self.scene_id, "shard": self.shard, "height": self.height, "width": self.width,
                "text_tokens": self.text_tokens, "caption": self.caption}


@dataclass
class Scene:
    """One cached scene as tensors: ``latents [M, C, h, w]``, ``txt [Lt, ctx]``, ``y [vec]``."""

    record: SceneRecord
    latents: Tensor
    txt: Tensor
    y: Tensor


class CacheWriter:
    """Collects scenes into shards inside a temp folder; :meth:`finish` writes the manifest and commits."""

    def __init__(self, path: "str | os.PathLike[str]", maps: MapSet, *, dtype: str = "bf16",
                 shard_size: int = 64, overwrite: bool = False) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
        self.maps, self.dtype_name, self.dtype = maps, dtype, DTYPES[dtype]
        self.shard_size = int(shard_size)
        self._folder = FolderBuilder(path, overwrite=overwrite, marker=MANIFEST, what="LumiX training cache")
        self.records: list[SceneRecord] = []
        self._pending: dict[str, Tensor] = {}
        self._pending_count = 0
        self._shard_index = 0
        self._shape: Optional[tuple[int, int]] = None  # (C, ctx/vec) consistency

    @property
    def path(self) -> Path:
        return self._folder.target

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._folder.__exit__(*exc)

    def _shard_name(self) -> str:
        return f"shard-{self._shard_index:05d}.safetensors"

    def add(self, scene_id: str, latents: Tensor, txt: Tensor, y: Tensor, caption: str) -> SceneRecord:
        """Add one scene (``latents [M, C, h, w]``, ``txt [Lt, ctx]``, ``y [vec]``)."""
        M = self.maps.size
        if latents.ndim != 4 or latents.shape[0] != M:
            raise ValueError(f"scene '{scene_id}': latents must be [{M}, C, h, w] (one per map), "
                             f"got {list(latents.shape)}")
        if txt.ndim != 2 or y.ndim != 1:
            raise ValueError(f"scene '{scene_id}': txt must be [tokens, features] and y [features], got "
                             f"{list(txt.shape)} and {list(y.shape)}")
        shape = (latents.shape[1], txt.shape[1], y.shape[0])
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise ValueError(f"scene '{scene_id}': channels/features {shape} differ from earlier scenes {self._shape}")
        n = len(self.records)
        for key, t in (("latents", latents), ("txt", txt), ("y", y)):
            self._pending[f"scene.{n}.{key}"] = t.detach().to("cpu", self.dtype).contiguous()
        record = SceneRecord(n, scene_id, self._shard_name(), int(latents.shape[2]), int(latents.shape[3]),
                             int(txt.shape[0]), caption)
        self.records.append(record)
        self._pending_count += 1
        if self._pending_count >= self.shard_size:
            self._flush()
        return record

    def _flush(self) -> None:
        if self._pending:
            atomic_save(self._pending, self._folder.tmp / self._shard_name(), {"format": CACHE_FORMAT})
            self._pending, self._pending_count = {}, 0
            self._shard_index += 1

    def finish(self, empty_txt: Tensor, empty_y: Tensor, *, info: Optional[dict[str, Any]] = None) -> Path:
        """Write the empty-caption conditioning and the manifest, then move the folder into place."""
        if not self.records:
            raise ValueError("no scenes to write: the cache would be empty")
        self._flush()
        if empty_txt.ndim != 2 or empty_y.ndim != 1 or (self._shape and (
                empty_txt.shape[1], empty_y.shape[0]) != self._shape[1:]):
            raise ValueError(f"empty-caption conditioning has shapes {list(empty_txt.shape)}, {list(empty_y.shape)}, "
                             f"which do not match the scenes' features {self._shape[1:] if self._shape else None}")
        atomic_save({"txt": empty_txt.detach().to("cpu", self.dtype), "y": empty_y.detach().to("cpu", self.dtype)},
                    self._folder.tmp / EMPTY_FILE, {"format": CACHE_FORMAT})
        manifest = {
            "format": CACHE_FORMAT, "version": CACHE_VERSION, "maps": self.maps.to_string(),
            "dtype": self.dtype_name, "latent_channels": self._shape[0], "context_dim": self._shape[1],
            "pooled_dim": self._shape[2], "empty_text_tokens": int(empty_txt.shape[0]),
            "scenes": [r.to_dict() for r in self.records], **(info or {}),
        }
        write_text_atomically(self._folder.tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        return self._folder.commit()


class LatentCache:
    """Read access to a cache folder (shards are opened lazily and memory-mapped)."""

    def __init__(self, path: "str | os.PathLike[str]") -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise CheckpointError(f"{self.path} is not a LumiX training cache (no {MANIFEST}); create it with "
                                  "'lumix-train prepare'")
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{manifest_path}: unreadable manifest ({e})") from None
        if self.manifest.get("format") != CACHE_FORMAT:
            raise CheckpointError(f"{manifest_path}: not a LumiX training cache manifest")
        if int(self.manifest.get("version", 0)) > CACHE_VERSION:
            raise CheckpointError(f"{manifest_path}: cache version {self.manifest['version']} is newer than this "
                                  f"trainer understands ({CACHE_VERSION}); update comfyui-lumix")
        self.maps = MapSet.parse(self.manifest["maps"])
        self.records = [SceneRecord(i, s["id"], s["shard"], int(s["height"]), int(s["width"]),
                                    int(s["text_tokens"]), s.get("caption", ""))
                        for i, s in enumerate(self.manifest["scenes"])]
        if not self.records:
            raise CheckpointError(f"{manifest_path}: the cache holds no scenes")
        for shard in sorted({r.shard for r in self.records} | {EMPTY_FILE}):
            if not (self.path / shard).is_file():
                raise CheckpointError(f"{self.path}: missing shard {shard}; the cache is incomplete, prepare it again")
        self._headers: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def latent_channels(self) -> int:
        return int(self.manifest["latent_channels"])

    @property
    def context_dim(self) -> int:
        return int(self.manifest["context_dim"])

    @property
    def pooled_dim(self) -> int:
        return int(self.manifest["pooled_dim"])

    def _load(self, shard: str, keys: list[str]) -> dict[str, Tensor]:
        header = self._headers.get(shard)
        if header is None:
            header = self._headers[shard] = read_header(self.path / shard)
        absent = [k for k in keys if k not in header.tensors]
        if absent:
            raise CheckpointError(f"{self.path / shard}: missing tensor '{absent[0]}'; the cache is corrupt")
        return load_tensors(header, "cpu", keys)

    def scene(self, index: int) -> Scene:
        r = self.records[index]
        t = self._load(r.shard, [f"scene.{index}.latents", f"scene.{index}.txt", f"scene.{index}.y"])
        return Scene(r, t[f"scene.{index}.latents"], t[f"scene.{index}.txt"], t[f"scene.{index}.y"])

    def empty_conditioning(self) -> tuple[Tensor, Tensor]:
        """``(txt [Lt, ctx], y [vec])`` of the empty caption (caption dropout)."""
        t = self._load(EMPTY_FILE, ["txt", "y"])
        return t["txt"], t["y"]

    def batch_shapes(self) -> set[tuple[int, int, int]]:
        """Distinct ``(h, w, text_tokens)`` of the scenes (a batch needs one of them)."""
        return {(r.height, r.width, r.text_tokens) for r in self.records}

"""Load each adapter file once: a cache keyed by (path, mtime, size), validated per model.

A node graph re-runs the loader on every queue and may patch several models with the same
file; reading 133 M parameters each time would waste seconds and, worse, hold several
copies in memory. The cache hands out the *same* :class:`~lumix_core.model.adapter.LumiXAdapter`
object (shared by reference, never deep-copied) until the file changes on disk. Validation
against the model runs on every call, from the header alone, so a mismatch is reported
before any tensor is read and even on a cache hit.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from ..io.safetensors_io import CheckpointError
from .adapter import LumiXAdapter
from .checkpoint import AdapterInfo, ModelShape, check_fits, inspect_adapter, load_adapter

CacheKey = tuple[str, int, int]


def file_key(path: "str | os.PathLike[str]") -> CacheKey:
    """``(real path, mtime in ns, size)``: changes whenever the file is replaced or rewritten."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read the adapter file ({e.strerror or e})") from e
    return (str(p.resolve()), st.st_mtime_ns, st.st_size)


class AdapterCache:
    """Small LRU of loaded adapters (a few entries: each release adapter is ~0.5 GB in fp32)."""

    def __init__(self, max_entries: int = 2) -> None:
        self.max_entries = max(1, int(max_entries))
        self._entries: "OrderedDict[CacheKey, LumiXAdapter]" = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # files actually read (for tests and diagnostics)

    def get(self, path: "str | os.PathLike[str]",
            model: Optional[ModelShape] = None) -> tuple[LumiXAdapter, AdapterInfo]:
        """The adapter in ``path``, checked against ``model``; loaded once per file version.

        Only the blocks the file names are required (the loader patches exactly those).
        """
        info = inspect_adapter(path)
        if model is not None:
            check_fits(info, model, require_all_blocks=False)
        key = file_key(path)
        with self._lock:
            adapter = self._entries.get(key)
            if adapter is not None:
                self._entries.move_to_end(key)
                return adapter, info
        adapter = load_adapter(path, model, require_all_blocks=False)
        adapter.requires_grad_(False)
        with self._lock:
            self.loads += 1
            stale = [k for k in self._entries if k[0] == key[0]]
            for k in stale:  # an older version of the same file
                del self._entries[k]
            self._entries[key] = adapter
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return adapter, info

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

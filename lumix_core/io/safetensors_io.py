"""Safe reading and atomic writing of safetensors files.

We load weights with safetensors only: a pickle (``.pt``/``.ckpt``/``.bin``/``.pth``, or a
pickle renamed ``.safetensors``) can run arbitrary code when loaded, so it is refused with
a message saying why and what to do. Headers are parsed by hand first so that a file can be
checked (keys, shapes, truncation) without reading gigabytes of tensors.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional

import torch
from torch import Tensor

from .files import write_atomically

PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"}
_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class CheckpointError(ValueError):
    """A weights file that cannot be used, with a message that says what to do.

    ``problem`` (what is wrong) and ``remedy`` (what to do) are kept apart because the right
    remedy depends on where the file came from: a damaged download is fetched again, a
    damaged file shipped inside this package is fixed by reinstalling it
    (:func:`lumix_core.toy.model.ToyLumiX.load` swaps the remedy).
    """

    def __init__(self, problem: str, remedy: Optional[str] = None) -> None:
        self.problem, self.remedy = problem, remedy
        super().__init__(f"{problem}; {remedy}" if remedy else problem)


#: Remedy for a file that is truncated or corrupt.
DOWNLOAD_AGAIN = "download it again"


@dataclass(frozen=True)
class ForeignFormat:
    """A common file format that is not safetensors, recognised by its first bytes."""

    what: str  # "a PNG image"
    pickled: bool  # loading it would unpickle (may run code), so it gets the conversion advice


#: Leading bytes of the formats people hand us by mistake. A zip is what ``torch.save``
#: writes (``.pt``/``.ckpt``); GGUF is how quantised FLUX files are often shared.
_MAGIC: tuple[tuple[bytes, ForeignFormat], ...] = (
    (b"\x89PNG\r\n\x1a\n", ForeignFormat("a PNG image", False)),
    (b"\xff\xd8\xff", ForeignFormat("a JPEG image", False)),
    (b"GGUF", ForeignFormat("a GGUF file (quantised weights for ComfyUI-GGUF)", False)),
    (b"PK\x03\x04", ForeignFormat("a zip archive, the format torch.save writes (.pt / .ckpt)", True)),
)
#: Bytes :func:`foreign_format` needs to recognise every format it knows.
MAGIC_LENGTH = 8


def foreign_format(head: bytes) -> Optional[ForeignFormat]:
    """What a file starting with ``head`` is, if it is a common non-safetensors format
    (PNG, JPEG, GGUF, zip / torch.save, pickle); ``None`` for anything else.

    One function for every loader (FLUX, adapters, encoders), so that a file given to the
    wrong flag is named by what it is instead of by a meaningless header length.
    """
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # PROTO opcode, protocol 2-5
        return ForeignFormat("Python pickle data", True)
    return None


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    def num_params(self) -> int:
        total = 0
        for info in self.tensors.values():
            n = 1
            for s in info.shape:
                n *= s
            total += n
        return total


def _refuse_pickle(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path.name}: {why}",
        "pickled weights can execute arbitrary code when loaded, so LumiX only reads .safetensors files. "
        "Convert it once in a trusted environment, e.g. "
        "`safetensors.torch.save_file(torch.load(f, weights_only=True), 'out.safetensors')`")


def _refuse_foreign(path: Path, fmt: ForeignFormat) -> CheckpointError:
    if fmt.pickled:
        return _refuse_pickle(path, f"this file is a pickle ({fmt.what}) despite its name")
    return CheckpointError(f"{path.name}: this file is {fmt.what}, not a safetensors weights file",
                           "check the path: pass the .safetensors weights file here")


def read_header(path: "str | os.PathLike[str]") -> SafetensorsHeader:
    """Parse and check a safetensors header without reading tensor data.

    Raises :class:`CheckpointError` for a pickle/zip file or another known non-safetensors
    format (named by :func:`foreign_format`), an unreadable or truncated file, or a
    malformed header.
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _refuse_pickle(path, f"'{path.suffix}' files are pickles")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(max(9, MAGIC_LENGTH))
            n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
            starts_like_header = 0 <= n <= _MAX_HEADER and head[8:9] == b"{"
            if not starts_like_header:
                fmt = foreign_format(head)
                if fmt is not None:
                    raise _refuse_foreign(path, fmt)
            if len(head) < 9:
                raise CheckpointError(f"{path.name}: file is empty or truncated ({size} bytes)", DOWNLOAD_AGAIN)
            if not starts_like_header:
                raise CheckpointError(
                    f"{path.name}: not a safetensors file (it starts with bytes {head[:8].hex(' ')}, which begin "
                    "no safetensors header); if it should be one, it is truncated or corrupt",
                    "check the path, or download it again")
            if 8 + n > size:
                raise CheckpointError(f"{path.name}: the file is truncated or corrupt: its header needs {8 + n} "
                                      f"bytes, the file has {size}", DOWNLOAD_AGAIN)
            f.seek(8)
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file ({e.strerror or e})") from e
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path.name}: corrupt safetensors header ({e})", DOWNLOAD_AGAIN) from e
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    data_end = 0
    for key, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(s) for s in entry["shape"]), entry["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path.name}: corrupt header entry for '{key}'") from e
        n_el = 1
        for s in shape:
            n_el *= s
        if dtype in _DTYPE_SIZES and end - begin != n_el * _DTYPE_SIZES[dtype]:
            raise CheckpointError(f"{path.name}: corrupt header: '{key}' {dtype}{list(shape)} has {end - begin} bytes")
        tensors[key] = TensorInfo(dtype, shape, end - begin)
        spans.append((begin, end, key))
        data_end = max(data_end, end)
    _check_spans(path, spans)
    if 8 + n + data_end > size:
        raise CheckpointError(
            f"{path.name}: file is truncated: its header describes {8 + n + data_end} bytes, the file has {size}",
            DOWNLOAD_AGAIN)
    return SafetensorsHeader(path, tensors, {str(k): str(v) for k, v in metadata.items()})


def _check_spans(path: Path, spans: list[tuple[int, int, str]]) -> None:
    """Tensor data must tile the data section without overlaps or gaps, as safetensors requires.

    Checked here so the file is named in the message (the library's ``InvalidOffset`` is not).
    """
    position, previous = 0, None
    for begin, end, key in sorted(spans):
        if begin != position or end < begin:
            if end < begin:
                where = "ends before it begins"
            elif begin < position:
                where = f"overlaps '{previous}'"
            else:
                where = f"leaves a gap after '{previous}'" if previous else "does not start at the first data byte"
            raise CheckpointError(f"{path.name}: corrupt header: the data of '{key}' (bytes {begin}-{end}) {where}; "
                                  "the file is damaged — download or export it again")
        position, previous = end, key


def load_tensors(header: SafetensorsHeader, device: "str | torch.device" = "cpu",
                 keys: Optional[list[str]] = None) -> dict[str, Tensor]:
    """Load (some of) the tensors of a file whose header was checked by :func:`read_header`."""
    return dict(iter_tensors(header, keys, device))


def iter_tensors(header: SafetensorsHeader, keys: Optional[list[str]] = None,
                 device: "str | torch.device" = "cpu") -> Iterator[tuple[str, Tensor]]:
    """The tensors of a file checked by :func:`read_header`, one at a time (on the CPU by default).

    Why one at a time: a caller converts (e.g. quantizes) and moves each tensor before the next
    is read, so a file larger than the device's memory never sits there whole.
    """
    from safetensors import safe_open

    with safe_open(str(header.path), framework="pt", device=str(device)) as f:
        for key in keys if keys is not None else header.tensors:
            yield key, f.get_tensor(key)


def atomic_save(tensors: Mapping[str, Tensor], path: "str | os.PathLike[str]",
                metadata: Optional[Mapping[str, str]] = None, overwrite: bool = False) -> Path:
    """Write a safetensors file atomically; never replace one unless asked."""
    from safetensors.torch import save_file

    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return write_atomically(path, lambda tmp: save_file(data, tmp, metadata=dict(metadata or {})),
                            overwrite=overwrite)

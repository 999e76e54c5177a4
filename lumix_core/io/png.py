"""Minimal PNG encoder (8/16-bit, grey/RGB/alpha) that always carries text chunks.

Why our own: Pillow cannot write 16-bit RGB, and OpenCV writes 16-bit RGB but drops all
text chunks -- yet every exported map must carry its prompt, seed and conventions. PNG is
simple enough (IHDR, text, zlib-compressed IDAT, IEND) to write directly with numpy + zlib,
one code path for every bit depth.
"""
from __future__ import annotations

import re
import struct
import zlib
from typing import Mapping, Optional

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: PNG colour type per channel count: grey, grey+alpha, RGB, RGBA.
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}

#: IDAT payload per chunk (any size up to 2**31-1 is valid; smaller chunks suit streaming readers).
_IDAT_CHUNK = 1 << 23


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _check_keyword(key: str) -> bytes:
    try:
        raw = key.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"PNG text keyword {key!r} must be Latin-1") from None
    if not 1 <= len(raw) <= 79 or key != key.strip() or "  " in key or any(c < 32 or 126 < c < 161 for c in raw):
        raise ValueError(
            f"PNG text keyword {key!r} is invalid: 1-79 printable Latin-1 characters, "
            "no leading/trailing or double spaces"
        )
    return raw


def escape_unencodable(value: str) -> str:
    """``value`` with what UTF-8 cannot hold (lone surrogates) and NUL written as backslash escapes.

    Why: a prompt pasted from elsewhere can carry a lone surrogate, and metadata must never cost
    the user the image it describes; the escaped text still shows what was there.
    """
    text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def safe_keyword(key: str) -> str:
    """A valid PNG keyword close to ``key``: unprintable / non-Latin-1 characters become '_',
    runs of spaces one space, no leading/trailing space, at most 79 bytes ('comment' if nothing is left)."""
    chars = "".join(c if 32 <= ord(c) <= 126 or 161 <= ord(c) <= 255 else "_" for c in key)
    return re.sub(" +", " ", chars).strip()[:79].rstrip() or "comment"


def safe_text(text: Mapping[str, object]) -> dict[str, str]:
    """Text chunks that always encode: keywords made valid (:func:`safe_keyword`, made unique with
    a ' 2', ' 3' ... suffix where two collide), values escaped (:func:`escape_unencodable`)."""
    out: dict[str, str] = {}
    for key, value in text.items():
        keyword = base = safe_keyword(str(key))
        n = 1
        while keyword in out:
            n += 1
            keyword = f"{base[:79 - len(str(n)) - 1]} {n}"
        out[keyword] = escape_unencodable(str(value))
    return out


def text_chunk(key: str, value: str) -> bytes:
    """A tEXt chunk when ``value`` is Latin-1, else an uncompressed UTF-8 iTXt chunk."""
    keyword = _check_keyword(key)
    try:
        latin = value.encode("latin-1")
        if b"\x00" not in latin:
            return _chunk(b"tEXt", keyword + b"\x00" + latin)
    except UnicodeEncodeError:
        pass
    # keyword, NUL, compression flag 0, method 0, empty language tag, NUL, empty translation, NUL
    return _chunk(b"iTXt", keyword + b"\x00\x00\x00" + b"\x00" + b"\x00" + value.encode("utf-8"))


def encode_png(pixels: np.ndarray, text: Optional[Mapping[str, str]] = None, compress_level: int = 6) -> bytes:
    """Encode ``pixels`` (uint8 or uint16, ``[H,W]`` or ``[H,W,C]`` with C in 1..4) as PNG bytes.

    Rows use the PNG "Up" filter (difference to the row above), which compresses smooth maps
    such as depth and normals far better than raw rows and vectorises in numpy.
    """
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"encode_png: expected a numpy array, got {type(pixels).__name__}")
    if pixels.dtype == np.uint8:
        bit_depth = 8
    elif pixels.dtype == np.uint16:
        bit_depth = 16
    else:
        raise ValueError(f"encode_png: pixels must be uint8 or uint16, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in _COLOR_TYPE or min(pixels.shape) == 0:
        raise ValueError(f"encode_png: expected [H,W] or [H,W,C] with C in 1..4, got shape {pixels.shape}")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"encode_png: compress_level must be 0..9, got {compress_level}")
    height, width, channels = pixels.shape
    rows = np.ascontiguousarray(pixels.astype(">u2") if bit_depth == 16 else pixels).view(np.uint8)
    rows = rows.reshape(height, width * channels * (bit_depth // 8))
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps mod 256
    data = zlib.compress(filtered.tobytes(), compress_level)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, _COLOR_TYPE[channels], 0, 0, 0)
    parts = [PNG_SIGNATURE, _chunk(b"IHDR", ihdr)]
    for key, value in (text or {}).items():
        parts.append(text_chunk(str(key), str(value)))
    for start in range(0, max(len(data), 1), _IDAT_CHUNK):
        parts.append(_chunk(b"IDAT", data[start : start + _IDAT_CHUNK]))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)

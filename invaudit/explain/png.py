"""A minimal PNG encoder (zlib + struct, no imaging library) for responsibility maps and
explanations. Pure: returns bytes; writing them to a file is the caller's job.

PNG format: ISO/IEC 15948 (W3C PNG specification), 8-bit greyscale (colour type 0) or truecolour
(colour type 2), no interlace, filter type 0 on every scanline.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from invaudit.errors import InputError

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes for an ``(H, W)`` greyscale or ``(H, W, 3)`` RGB array of uint8."""
    a = np.asarray(pixels)
    if a.dtype != np.uint8:
        raise InputError(f"PNG pixels must be uint8, got {a.dtype}.")
    if a.ndim == 2:
        colour = 0
    elif a.ndim == 3 and a.shape[2] == 3:
        colour = 2
    else:
        raise InputError(f"PNG pixels must have shape (H, W) or (H, W, 3), got {a.shape}.")
    H, W = a.shape[:2]
    if H < 1 or W < 1:
        raise InputError("a PNG image needs at least one pixel.")
    rows = np.ascontiguousarray(a).reshape(H, -1)
    raw = np.concatenate([np.zeros((H, 1), dtype=np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", W, H, 8, colour, 0, 0, 0)
    return (_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b""))


def _upscale(img: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to uint8 RGB on a black-red-yellow-white ramp."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    r = np.clip(3.0 * v, 0.0, 1.0)
    g = np.clip(3.0 * v - 1.0, 0.0, 1.0)
    b = np.clip(3.0 * v - 2.0, 0.0, 1.0)
    return np.round(255.0 * np.stack([r, g, b], axis=-1)).astype(np.uint8)


def responsibility_png(responsibility: np.ndarray, shape, *, scale: int = 16) -> bytes:
    """The responsibility map as a heat-map PNG (scaled to the map's maximum)."""
    H, W = shape
    r = np.asarray(responsibility, dtype=np.float64).reshape(H, W)
    top = r.max()
    img = heat_colours(r / top if top > 0 else r)
    return encode_png(_upscale(img, int(scale)))


def explanation_png(x: np.ndarray, features, shape, *, scale: int = 16) -> bytes:
    """The input in grey where the explanation keeps it, dark blue elsewhere (at the baseline)."""
    H, W = shape
    x = np.asarray(x, dtype=np.float64).reshape(H, W)
    lo, hi = x.min(), x.max()
    grey = np.round(255.0 * ((x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)))
    keep = np.zeros(H * W, dtype=bool)
    keep[np.asarray(features, dtype=np.intp)] = True
    keep = keep.reshape(H, W)
    img = np.empty((H, W, 3), dtype=np.uint8)
    img[...] = grey.astype(np.uint8)[..., None]
    img[~keep] = (0, 0, 60)
    return encode_png(_upscale(img, int(scale)))

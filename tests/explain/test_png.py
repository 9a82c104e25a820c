from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from invaudit.errors import InputError
from invaudit.explain.png import encode_png, explanation_png, responsibility_png


def decode_png(data: bytes) -> np.ndarray:
    """An independent reader for 8-bit, non-interlaced PNGs with filter type 0 (checks CRCs)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
        if kind == b"IEND":
            break
    W, H, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0
    channels = {0: 1, 2: 3}[colour]
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(H, 1 + W * channels)
    assert np.all(raw[:, 0] == 0)
    img = raw[:, 1:].reshape(H, W, channels)
    return img[..., 0] if channels == 1 else img


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (4, 3, 3)])
def test_round_trip(shape):
    a = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(a)), a)


def test_maps_and_explanations():
    resp = np.linspace(0, 0.5, 64)
    img = decode_png(responsibility_png(resp, (8, 8), scale=4))
    assert img.shape == (32, 32, 3)
    assert tuple(img[0, 0]) == (0, 0, 0) and tuple(img[-1, -1]) == (255, 255, 255)
    x = np.arange(64.0)
    img = decode_png(explanation_png(x, [0, 63], (8, 8), scale=2))
    assert tuple(img[0, 0]) == (0, 0, 0) and tuple(img[-1, -1]) == (255, 255, 255)
    assert tuple(img[0, 2]) == (0, 0, 60)


def test_bad_pixels():
    with pytest.raises(InputError):
        encode_png(np.zeros((2, 2)))
    with pytest.raises(InputError):
        encode_png(np.zeros((2, 2, 4), dtype=np.uint8))

"""Minimal 8-bit grayscale PNG writer.

Fractal images are mostly runs of 0 and 255: zlib's run-length strategy with no row
filter packs them smaller than Pillow's default and about 4x faster (PNG encoding would
otherwise cost more than rendering). Any PNG reader opens the result as mode "L".
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_gray_png(image: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8 array."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 array, got shape {image.shape} dtype {image.dtype}")
    height, width = image.shape
    rows = np.zeros((height, width + 1), np.uint8)  # leading 0: filter type "none" per row
    rows[:, 1:] = image
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    pixels = compressor.compress(rows.tobytes()) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, grayscale
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def write_gray_png(path, image: np.ndarray) -> None:
    with open(path, "wb") as file:
        file.write(encode_gray_png(image))

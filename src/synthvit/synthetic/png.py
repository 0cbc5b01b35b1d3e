"""Minimal 8-bit grayscale (or gray-as-RGB) PNG writer.

Fractal images are mostly runs of 0 and 255: zlib's run-length strategy with no row
filter packs them smaller and faster than Pillow, which picks a row filter per row and
has no option to skip it (PNG encoding would otherwise cost more than rendering). Any
PNG reader opens the result as mode "L", or "RGB" with three equal channels when asked
(FractalDB's files are RGB).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# Measured on 200 fractals at 362 px (Pillow 12.3, Intel Xeon @ 2.80GHz, same pixels): 802 img/s and 7.7 kB each,
# Pillow's default 147 img/s and 10.5 kB, its fastest (compress_level=1) 371 img/s; at 64 px 6x and 2.5x as fast.
def encode_png(image: np.ndarray, rgb: bool = False) -> bytes:
    """PNG bytes of a 2-D uint8 array: grayscale, or RGB with the gray value in every channel."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 array, got shape {image.shape} dtype {image.dtype}")
    height, width = image.shape
    channels = 3 if rgb else 1
    rows = np.zeros((height, width * channels + 1), np.uint8)  # leading 0: filter type "none" per row
    rows[:, 1:] = np.repeat(image, channels, axis=1)
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    pixels = compressor.compress(rows.tobytes()) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if rgb else 0, 0, 0, 0)  # 8-bit, RGB or grayscale
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")

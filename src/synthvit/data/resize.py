"""Pillow's bicubic resize of square uint8 gray images, in torch on any device.

data.fit_image resizes every synthetic image with `Image.resize(size, Image.BICUBIC)`;
images rendered on a GPU are resized here instead, to the same bytes, so they need not go
to the host and back. Hand-written because no library reproduces Pillow's resize exactly
(torchvision's antialiased bicubic computes in floats and rounds differently): this is
Pillow's Resample.c. Per output pixel, weights from its bicubic filter (a = -0.5)
stretched by the downscale factor, normalised, rounded to 22-bit fixed point; a horizontal
then a vertical pass, each rounding and clipping to uint8. The passes are float64 matrix
products, exact because every product and partial sum is an integer below 2**53
(tests/unit/test_synthetic_torch.py compares with Pillow byte for byte).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images
SUPPORT = 2.0  # the bicubic filter's support


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@functools.lru_cache(maxsize=16)
def weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) int64 fixed-point weights: Pillow's precompute_coeffs + normalize_coeffs_8bpc."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = SUPPORT * filter_scale
    out = np.zeros((out_size, in_size), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        x_min = max(int(center - support + 0.5), 0)  # C's (int): truncation
        x_max = min(int(center + support + 0.5), in_size)
        taps = [_bicubic((x - center + 0.5) * (1.0 / filter_scale)) for x in range(x_min, x_max)]
        total = sum(taps)  # in order, in double, as Pillow sums
        taps = [w / total if total != 0.0 else w for w in taps]
        out[xx, x_min:x_max] = [int(w * (1 << PRECISION_BITS) + (0.5 if w >= 0 else -0.5)) for w in taps]
    return out


def _pass(images: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """One resampling pass along the last axis: Pillow's rounding, then clip8 to 0..255."""
    k = torch.from_numpy(kernel.T).to(images.device, torch.float64)
    acc = images.double() @ k + (1 << (PRECISION_BITS - 1))
    return torch.floor_divide(acc, 1 << PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, S, S) uint8 -> (N, size, size) uint8, as Image.resize((size, size), Image.BICUBIC)."""
    if images.shape[-1] == size:
        return images  # fit_image skips the resize too
    kernel = weights(images.shape[-1], size)
    wide = _pass(images, kernel)  # horizontal: (N, S, size)
    return _pass(wide.transpose(1, 2), kernel).transpose(1, 2).contiguous()  # vertical

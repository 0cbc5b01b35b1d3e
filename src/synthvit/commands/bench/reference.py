"""Per-point reference renderer: FractalDB's algorithm written plainly, one point at a time.

One walker plays the chaos game in Python floats, choosing each map by its cumulative
probability; then every point draws a random 9-bit mask (1..511), builds its 3x3 patch
and pastes it over the image, later patches overwriting earlier ones. It is slow because it
is obvious: `bench` measures the fast renderer against it and the tests
check that both cover the same pixels. Conventions shared with render.py: burn_in steps
from the origin are not drawn (render.py picks its own per system; pass a long one to
compare), non-finite points are dropped, the bounding box of the points maps to
[pad, size-pad-3] on each axis with y up, a patch's corner sits on its point.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random

import numpy as np

from synthvit.synthetic.render import LIT

BURN_IN = 32  # default steps from the origin before a point counts


def chaos_game_reference(
    maps, probabilities, num_points: int, rng: random.Random, burn_in: int = BURN_IN
) -> list[tuple[float, float]]:
    """num_points chaos-game points after burn_in undrawn steps from (0, 0)."""
    maps = [tuple(float(v) for v in m) for m in maps]
    total = float(sum(probabilities))
    cumulative = list(itertools.accumulate(float(p) / total for p in probabilities))
    x = y = 0.0
    points = []
    for step in range(burn_in + num_points):
        k = min(bisect.bisect_right(cumulative, rng.random()), len(maps) - 1)  # the first map whose share covers u
        a, b, c, d, e, f = maps[k]
        x, y = a * x + b * y + e, c * x + d * y + f
        if step >= burn_in:
            points.append((x, y))
    return points


def paste_patches_reference(
    points, image_size: int, rng: random.Random, patch: str = "random", pad: int = 0, value: int = LIT
) -> np.ndarray:
    """Scale points into the image and paste one 3x3 patch per point, in order."""
    image = np.zeros((image_size, image_size), np.uint8)
    points = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if not points:
        return image
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x_min, x_max, y_min, y_max = min(xs), max(xs), min(ys), max(ys)
    # Halves: the distance between two finite floats can overflow, between their halves not.
    extent = image_size - 2 * pad - 3
    scale_x = extent / (x_max / 2 - x_min / 2) if x_max > x_min else 0.0
    scale_y = extent / (y_max / 2 - y_min / 2) if y_max > y_min else 0.0
    for x, y in points:
        col = pad + int((x / 2 - x_min / 2) * scale_x)
        row = pad + int((y_max / 2 - y / 2) * scale_y)
        mask = rng.randrange(1, 512) if patch == "random" else 511
        cells = [value * (mask >> bit & 1) for bit in range(9)]  # bit 3i + j lights cell (i, j)
        image[row : row + 3, col : col + 3] = np.array(cells, np.uint8).reshape(3, 3)
    return image


def render_reference(
    maps, probabilities, image_size: int, num_points: int, seed: int, burn_in: int = BURN_IN, **look
) -> np.ndarray:
    """One (image_size, image_size) uint8 image, point by point; `look` is paste_patches_reference's patch, pad
    and value."""
    rng = random.Random(seed)
    points = chaos_game_reference(maps, probabilities, num_points, rng, burn_in)
    return paste_patches_reference(points, image_size, rng, **look)

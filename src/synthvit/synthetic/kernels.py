"""Compiled twins (numba) of render.py's hot loops: same float32 operations, same bytes.

render.py's numpy code is bound by call overhead and by a dozen passes over every point;
these loops fuse them. Each is the single IEEE operation numpy performs per element, in
numpy's order (((a * x) + (b * y)) + e, no fused multiply-add: numba does not contract
without fastmath), so images, converged flags and fill rates equal the numpy path's byte
for byte (tests/unit/test_synthetic_kernels.py). Without numba (a GPU machine's minimal
install, or SYNTHVIT_NUMBA=0) render.py runs its numpy code: same images, slower.

Measured by `synthvit bench synthetic` (FractalDB settings, 1 process): README, "Synthetic data".
"""

from __future__ import annotations

import os

import numpy as np

try:
    import numba
except ImportError:  # optional: render.py falls back to numpy
    numba = None

ENABLED = numba is not None and os.environ.get("SYNTHVIT_NUMBA", "1") != "0"


def _compiled(fn):
    """fn compiled on first call; cached in __pycache__ (which .dvcignore keeps out of code deps)."""
    if numba is None:
        return fn
    try:
        return numba.njit(cache=True)(fn)
    except RuntimeError:  # no writable cache location: compile in every process instead (~7 s)
        return numba.njit(fn)


@_compiled
def burn_in_steps(linear, tangent_walkers, offsets, min_burn_in, max_burn_in, check_every, tolerance_sq, diverged_sq):
    """render._burn_in: burn-in steps (F,) of each system; max_burn_in when it never forgot its start.

    linear (F, 2, 2, slots) float32: [i, 0] holds (a, c), [i, 1] holds (b, d) of every table slot.
    """
    count = linear.shape[0]
    burn_in = np.full(count, max_burn_in, np.int64)
    tx = np.empty((2, tangent_walkers), np.float32)  # the two tangent vectors' x and y
    ty = np.empty((2, tangent_walkers), np.float32)
    tolerance, diverged = np.float32(tolerance_sq), np.float32(diverged_sq)  # numpy compares in float32
    for i in range(count):
        tx[0, :], ty[0, :], tx[1, :], ty[1, :] = 1, 0, 0, 1
        for t in range(max_burn_in):
            window = slice(offsets[t], offsets[t] + tangent_walkers)
            a, c = linear[i, 0, 0, window], linear[i, 0, 1, window]
            b, d = linear[i, 1, 0, window], linear[i, 1, 1, window]
            for v in range(2):
                for w in range(tangent_walkers):
                    x, y = tx[v, w], ty[v, w]
                    tx[v, w] = a[w] * x + b[w] * y
                    ty[v, w] = c[w] * x + d[w] * y
            steps = t + 1
            if steps % check_every:
                continue
            worst = np.float32(0)
            for v in range(2):
                for w in range(tangent_walkers):
                    norm = tx[v, w] * tx[v, w] + ty[v, w] * ty[v, w]
                    if np.isnan(norm):
                        worst = np.float32(np.inf)
                    elif norm > worst:
                        worst = norm
            if steps >= min_burn_in and worst < tolerance:
                burn_in[i] = steps
                break
            if worst > diverged:
                break  # it will not shrink to the tolerance in time: max_burn_in
    return burn_in


@_compiled
def prerun(coef, burn_in, pre, stride, offsets, starts, path):
    """render._prerun's walk: fills starts (F, 2, collect, pre) and path (F, 2, >= max burn-in + 1).

    Pre-run walker w of system i starts at the origin and steps burn_in[i] + stride * collect
    times; after the burn-in every stride-th position becomes a starting point. path[i]
    gets walker 0's positions up to its burn-in (the rest is left as it was).
    """
    collect = starts.shape[2]
    x, y = np.empty(pre, np.float32), np.empty(pre, np.float32)
    for i in range(coef.shape[0]):
        x[:], y[:] = 0, 0
        burn = burn_in[i]
        for t in range(burn + stride * collect):
            _affine_step(coef[i], offsets[t], x, y, x, y)  # in place: walker w reads and writes only slot w
            steps = t + 1
            if steps <= burn:
                path[i, 0, steps], path[i, 1, steps] = x[0], y[0]
            elif (steps - burn) % stride == 0:  # burn-ins are multiples of stride
                taken = (steps - burn) // stride - 1
                starts[i, 0, taken, :], starts[i, 1, taken, :] = x, y


@_compiled
def _affine_step(coef, offset, x, y, out_x, out_y):
    """out = (a, c) * x + (b, d) * y + (e, f) over walkers, with the maps of slots offset...offset + walkers.

    Slices, not coef[i, offset + w]: numba wraps negative indices, and that select per
    access kept LLVM from vectorizing the loop (3x slower, measured).
    """
    n = x.shape[0]
    a, c = coef[0, 0, offset : offset + n], coef[0, 1, offset : offset + n]
    b, d = coef[1, 0, offset : offset + n], coef[1, 1, offset : offset + n]
    e, f = coef[2, 0, offset : offset + n], coef[2, 1, offset : offset + n]
    for w in range(n):
        x_w, y_w = x[w], y[w]
        out_x[w] = a[w] * x_w + b[w] * y_w + e[w]
        out_y[w] = c[w] * x_w + d[w] * y_w + f[w]


@_compiled
def chaos_steps(coef, offsets, position, history):
    """render._chaos_game's steps: history[i, :, t] is every walker of system i after step t + 1.

    coef (F, 3, 2, slots), position (F, 2, walkers) the starting points, history (F, 2, steps, walkers).
    """
    for i in range(coef.shape[0]):
        x, y = position[i, 0], position[i, 1]
        for t in range(history.shape[2]):
            _affine_step(coef[i], offsets[t], x, y, history[i, 0, t], history[i, 1, t])
            x, y = history[i, 0, t], history[i, 1, t]


@_compiled
def mark_points(xs, ys, cells, size, low, x_min, y_max, scale_x, scale_y, index):
    """render._mark_points' arithmetic: set cells (a flat (size, size) grid) at each (finite) point.

    x_min, y_max and the scales are float32, or float64 when a span reaches 1e30, as numpy's;
    the index arithmetic runs in their type (numba compiles a loop for each). Its values are
    whole numbers below 2**24, so the integer form here is the same. index: an int32 scratch
    buffer as long as xs.
    """
    # Two passes, indices first: the conversions then vectorise (measured 1.8x faster than one pass).
    size32, base = np.int32(size), np.int32(low * (size + 1))
    for k in range(xs.shape[0]):
        # Both products are >= 0 (x >= x_min), so truncation is floor.
        index[k] = np.int32((y_max - ys[k]) * scale_y) * size32 + np.int32((xs[k] - x_min) * scale_x) + base
    count = np.uint32(cells.size)
    for k in range(xs.shape[0]):
        if np.uint32(index[k]) < count:  # a degenerate box (NaN scale) would index anywhere
            cells[np.uint32(index[k])] = True

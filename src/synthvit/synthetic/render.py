"""Fast IFS renderer: many chaos-game walkers per fractal, many fractals per call (numpy).

It draws what FractalDB's per-point renderer draws (see reference.py): every chaos-game
point pastes a 3x3 patch whose cells come from a random 9-bit mask, later patches
overwriting earlier ones, grayscale. The work is per pixel instead of per point:

1. Chaos game. Walker w at step t applies map table[(w + offset[t]) % TABLE_SIZE], where
   `table` is a random permutation of TABLE_SIZE slots shared out in proportion to the
   map probabilities. One walker visits distinct slots of a random permutation, so its
   maps are independent draws with the right probabilities; all walkers together read
   one contiguous slice of a precomputed coefficient table, so a step is four array
   operations with no gather and no per-point random numbers.
2. Walkers start on the attractor: a small pre-run (burn-in from the origin, not drawn)
   hands out distinct starting points, so no drawn point is a transient or a duplicate.
3. Raster: points are scaled into the image as FractalDB does (bounding box of all
   points, x and y separately, y up), marked in an occupancy grid, and the grid is
   dilated by 3x3: the pixels that some patch covers.
4. Masks: the last patch over a covered pixel sets it through one bit of a uniformly
   random mask that does not depend on where the point landed, so each covered pixel is
   an independent fair coin (FractalDB excludes the all-zero mask: 256/511, not 1/2).

Step offsets are one fixed sequence for every image; an image's own randomness (table
permutation, mask bits) comes from its seed alone, so an image is byte-identical
whichever batch, process or machine renders it.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np

TABLE_SIZE = 4096  # map-choice slots: probabilities are quantised to 1/4096
MAX_WALKERS = 4096
MIN_STEPS = 32  # fewer walkers than points/32 would leave numpy call overhead dominant
PRERUN_WALKERS = 512
BURN_IN = 32  # steps from the origin before a point counts (also in reference.py)
PATCHES = ("random", "full")  # random 9-bit masks (FractalDB) or solid 3x3 squares
LIT = 255  # gray value of a lit pixel

_OFFSET_SEED = 0x5EED_0FF5E7  # fixed: the offsets are part of the algorithm, not of an image
_thread_local = threading.local()


def _scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """This thread's reusable buffer `name`, viewed as `shape` (contents undefined).

    Fresh multi-megabyte arrays cost more in page faults than in arithmetic (measured:
    ~1.5x slower rendering), so each thread keeps one grow-only buffer per use.
    """
    buffers = _thread_local.__dict__.setdefault("buffers", {})
    count = math.prod(shape)
    buffer = buffers.get((name, dtype))
    if buffer is None or buffer.size < count:
        buffer = buffers[(name, dtype)] = np.empty(count, dtype)
    return buffer[:count].reshape(shape)


def walker_layout(num_points: int) -> tuple[int, int]:
    """(walkers, steps) for one image: walkers * steps >= num_points."""
    walkers = max(1, min(MAX_WALKERS, num_points // MIN_STEPS))
    return walkers, -(-num_points // walkers)


@functools.lru_cache(maxsize=64)
def _offsets(stream: int, count: int) -> np.ndarray:
    offsets = np.random.default_rng([_OFFSET_SEED, stream]).integers(0, TABLE_SIZE, size=count)
    offsets.flags.writeable = False
    return offsets


def _map_table(probabilities: np.ndarray, rng: np.random.Generator, length: int) -> np.ndarray:
    """Map index per slot, shuffled, tiled to `length` (<= 2 * TABLE_SIZE) so any window
    of walkers is a slice."""
    bounds = np.floor(np.cumsum(probabilities / probabilities.sum()) * TABLE_SIZE + 0.5).astype(np.intp)
    bounds[-1] = TABLE_SIZE
    table = np.repeat(np.arange(len(bounds)), np.diff(bounds, prepend=0))
    rng.shuffle(table)
    return np.concatenate([table, table[: length - TABLE_SIZE]])


def _step(coef, offset: int, walkers: int, position, out, scratch) -> None:
    """One chaos-game step for every walker of every image; positions are (F, 2, walkers).

    coef is (F, 3, 2, slots): rows (a, c), (b, d), (e, f), so x' and y' come out of the
    same four numpy calls (call overhead, not arithmetic, bounds small steps).
    """
    window = slice(offset, offset + walkers)
    np.multiply(coef[:, 0, :, window], position[:, 0:1], out=out)  # (a, c) * x
    np.multiply(coef[:, 1, :, window], position[:, 1:2], out=scratch)  # (b, d) * y
    out += scratch
    out += coef[:, 2, :, window]  # + (e, f)


def _chaos_game(systems, num_points: int, rngs) -> tuple[np.ndarray, np.ndarray]:
    """(xs, ys), each (F, num_points) float32: the chaos-game points of each system.

    They are views of this thread's scratch buffers, valid until its next render.
    """
    count = len(systems)
    walkers, steps = walker_layout(num_points)
    slots = TABLE_SIZE + walkers
    coef = _scratch("coef", (count, 6, slots), np.float32)
    for i, ((maps, probabilities), rng) in enumerate(zip(systems, rngs)):
        columns = np.asarray(maps, np.float32).T[[0, 2, 1, 3, 4, 5]]  # rows a, c, b, d, e, f
        np.take(columns, _map_table(np.asarray(probabilities, np.float64), rng, slots), axis=1, out=coef[i])
    coef = coef.reshape(count, 3, 2, slots)

    with np.errstate(over="ignore", invalid="ignore"):  # divergent systems overflow to inf/nan
        # Pre-run: a few walkers burn in from the origin, then their next positions
        # become the main walkers' starting points.
        pre = min(PRERUN_WALKERS, walkers)
        collect = -(-walkers // pre)
        position = np.zeros((count, 2, pre), np.float32)
        scratch = np.empty_like(position)
        starts = np.empty((count, 2, collect, pre), np.float32)
        for t, offset in enumerate(_offsets(0, BURN_IN + collect)):
            out = np.empty_like(position)
            _step(coef, offset, pre, position, out, scratch)
            position = out
            if t >= BURN_IN:
                starts[:, :, t - BURN_IN] = position
        position = starts.reshape(count, 2, -1)[:, :, :walkers]

        history = _scratch("history", (count, 2, steps, walkers), np.float32)
        scratch = _scratch("step", (count, 2, walkers), np.float32)
        for t, offset in enumerate(_offsets(1, steps)):
            _step(coef, offset, walkers, position, history[:, :, t], scratch)
            position = history[:, :, t]
    points = history.reshape(count, 2, -1)[:, :, :num_points]
    return points[:, 0], points[:, 1]


def _mark_points(xs: np.ndarray, ys: np.ndarray, grid: np.ndarray) -> None:
    """Set grid[row, col] at each point's patch corner; x and y scale to [0, size-3] separately."""
    size = grid.shape[0]
    bounds = xs.min(), xs.max(), ys.min(), ys.max()
    if not np.isfinite(bounds).all():  # a divergent walk: keep its finite points only
        keep = np.isfinite(xs) & np.isfinite(ys)
        if not keep.any():
            return
        xs, ys = xs[keep], ys[keep]
        bounds = xs.min(), xs.max(), ys.min(), ys.max()
    x_min, x_max, y_min, y_max = (float(v) for v in bounds)
    span_x, span_y = x_max - x_min, y_max - y_min
    dtype = np.float32 if max(span_x, span_y) < 1e30 else np.float64  # keep x - x_min finite
    scale_x = dtype((size - 3) / span_x if span_x > 0 else 0.0)
    scale_y = dtype((size - 3) / span_y if span_y > 0 else 0.0)
    # Flat index floor(row) * size + floor(col), in floats: exact below 2**24 (size <= 4096).
    col = _scratch("col", xs.shape, dtype)
    np.subtract(xs, dtype(x_min), out=col)
    col *= scale_x
    np.floor(col, out=col)
    row = _scratch("row", xs.shape, dtype)
    np.subtract(dtype(y_max), ys, out=row)  # y up, as FractalDB's flipped images
    row *= scale_y
    np.floor(row, out=row)
    row *= dtype(size)
    row += col
    index = _scratch("index", xs.shape, np.intp)
    np.copyto(index, row, casting="unsafe")
    # Rounding can put a point one cell past size-3; that stays inside the grid.
    grid.reshape(-1)[index] = True


def _dilate3(grid: np.ndarray, covered: np.ndarray) -> None:
    """covered[r, c] = any(grid[r-i, c-j] for i, j in 0..2): each mark covers its 3x3 patch."""
    rows = _scratch("rows", grid.shape, np.bool_)
    np.copyto(rows, grid)
    rows[..., 1:] |= grid[..., :-1]
    rows[..., 2:] |= grid[..., :-2]
    np.copyto(covered, rows)
    covered[..., 1:, :] |= rows[..., :-1, :]
    covered[..., 2:, :] |= rows[..., :-2, :]


def _coin_flips(rng: np.random.Generator, size: int) -> np.ndarray:
    flips = np.unpackbits(np.frombuffer(rng.bytes(-(-size * size // 8)), np.uint8))
    return flips[: size * size].reshape(size, size).view(np.bool_)


def rasterize(xs: np.ndarray, ys: np.ndarray, image_size: int, rngs, patch: str = "random") -> np.ndarray:
    """(F, size, size) uint8 images, LIT where a patch cell is set, from (F, N) points."""
    if patch not in PATCHES:
        raise ValueError(f"patch={patch!r} must be one of {PATCHES}")
    shape = (len(xs), image_size, image_size)
    grid = _scratch("grid", shape, np.bool_)
    grid[...] = False
    for i in range(len(xs)):
        _mark_points(xs[i], ys[i], grid[i])
    covered = _scratch("covered", shape, np.bool_)
    _dilate3(grid, covered)
    if patch == "random":
        for i, rng in enumerate(rngs):
            covered[i] &= _coin_flips(rng, image_size)
    return np.multiply(covered.view(np.uint8), np.uint8(LIT))  # a fresh array: the caller keeps it


def render_batch(systems, image_size: int, num_points: int, seeds, patch: str = "random") -> np.ndarray:
    """Render several IFS at once: systems is a list of (maps (K, 6), probabilities (K,)).

    Returns (len(systems), image_size, image_size) uint8. Image i depends only on
    systems[i], seeds[i] and the sizes, never on the rest of the batch.
    """
    if len(systems) != len(seeds):
        raise ValueError(f"{len(systems)} systems but {len(seeds)} seeds")
    for maps, probabilities in systems:
        maps, probabilities = np.asarray(maps), np.asarray(probabilities, np.float64)
        if maps.ndim != 2 or maps.shape[1] != 6 or probabilities.shape != (len(maps),):
            raise ValueError(f"expected maps (K, 6) and probabilities (K,), got {maps.shape} and {probabilities.shape}")
        if not (np.all(probabilities >= 0) and probabilities.sum() > 0):
            raise ValueError(f"probabilities {probabilities.tolist()} must be >= 0 with a positive sum")
    if not systems:
        return np.zeros((0, image_size, image_size), np.uint8)
    if image_size < 3:
        raise ValueError(f"image_size={image_size} must be >= 3 for 3x3 patches")
    rngs = [np.random.default_rng(seed) for seed in seeds]
    xs, ys = _chaos_game(systems, num_points, rngs)
    return rasterize(xs, ys, image_size, rngs, patch)


def render_ifs(maps, probabilities, image_size: int, num_points: int, seed: int, patch: str = "random") -> np.ndarray:
    """One (image_size, image_size) uint8 image."""
    return render_batch([(maps, probabilities)], image_size, num_points, [seed], patch)[0]


def fill_rates(images: np.ndarray) -> np.ndarray:
    """Fraction of lit (nonzero) pixels of each image in a (F, H, W) stack."""
    return np.count_nonzero(images, axis=(1, 2)) / (images.shape[1] * images.shape[2])

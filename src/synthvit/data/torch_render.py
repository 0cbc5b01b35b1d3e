"""render.py's renderer in torch, on any device: the same algorithm, the same bytes.

Pre-training on CUDA renders on the GPU with it (data/fractals.py: RenderedImages.device_batches); everything
else renders with numpy (render.py stays the reference). The work splits in two:

- `draw` (host, numpy): everything random, by render.py's own functions from the same
  per-image seeds: each image's map table (render._map_table) and its mask coin flips
  (render.coin_flip_bytes), in the order render_batch draws them. Small: a byte per
  table slot, a bit per pixel.
- `render` (any torch device): the arithmetic. The walk (the per-system burn-in, the
  pre-run handing out starting points, the chaos-game steps over the same fixed step
  offsets) is render.py's own array code run on torch tensors (render.walk, xp=torch);
  the raster (bounding box, y up, pad, float32 flat index), the 3x3 dilation, the masks
  and the gray value are ports of their render.py namesakes, all images at once.

Every float operation is the single IEEE operation numpy performs, in the same order:
separate multiply and add kernels (no fused multiply-add; do not torch.compile the step),
so on a CPU the images and converged flags equal render_batch's byte for byte
(tests/unit/test_synthetic_torch.py). CUDA's float32 multiply and add are IEEE-rounded too, so
GPU images should match as well; that has not been checked (no GPU where this was written).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from synthvit.synthetic import render as np_render
from synthvit.synthetic.draws import mirrors
from synthvit.synthetic.render import TABLE_SIZE, RenderSettings, batch_size_for, walker_layout

DEVICE_POINTS_PER_BATCH = 1 << 26  # points per render call on a GPU: ~3 GB of float32 temporaries


@dataclasses.dataclass
class Draws:
    """The random numbers of a batch of images, drawn on the host (see `draw`)."""

    columns: torch.Tensor  # (F, 6, K) float32: rows a, c, b, d, e, f of each system's maps, zero-padded
    tables: torch.Tensor  # (F, slots) uint8: the map each table slot applies
    flip_bytes: torch.Tensor | None  # (F, bytes) uint8: packed mask coin flips (random patches only)
    flips: torch.Tensor  # (F, 2) bool: reverse the image's rows, its columns (draws.mirrors)

    def __len__(self) -> int:
        return len(self.columns)

    def _map(self, fn) -> Draws:
        fields = (getattr(self, field.name) for field in dataclasses.fields(self))  # (astuple would deep-copy)
        return Draws(*(None if t is None else fn(t) for t in fields))

    def pin_memory(self) -> Draws:  # DataLoader(pin_memory=True) calls this
        return self._map(torch.Tensor.pin_memory)

    def to(self, device: torch.device) -> Draws:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def chunk(self, start: int, stop: int) -> Draws:
        return self._map(lambda t: t[start:stop])


def concat(parts: list[Draws]) -> Draws:
    """Several batches' draws as one (one render call: on a GPU a call's cost is mostly kernel launches)."""
    most_maps = max(part.columns.shape[2] for part in parts)
    columns = [torch.nn.functional.pad(part.columns, (0, most_maps - part.columns.shape[2])) for part in parts]
    flip_bytes = None if parts[0].flip_bytes is None else torch.cat([part.flip_bytes for part in parts])
    return Draws(
        torch.cat(columns),
        torch.cat([part.tables for part in parts]),
        flip_bytes,
        torch.cat([part.flips for part in parts]),
    )


def draw(systems, seeds, settings: RenderSettings, flips: list[str] | None = None) -> Draws:
    """Each image's map table and coin flips, from its seed exactly as render_batch draws them.

    flips: draws.flip's `how` for each image ("none", "vertical", "horizontal", "both").
    """
    np_render._check_systems(systems, seeds, settings.image_size, settings.pad, settings.patch)
    walkers, _ = walker_layout(settings.num_points)
    slots = TABLE_SIZE + walkers
    most_maps = max((len(maps) for maps, _ in systems), default=1)
    if most_maps > 256:
        raise ValueError(f"at most 256 maps per system (uint8 tables), got {most_maps}")
    columns = np.zeros((len(systems), 6, most_maps), np.float32)
    tables = np.empty((len(systems), slots), np.uint8)
    flip_bytes = []
    for i, ((maps, probabilities), seed) in enumerate(zip(systems, seeds)):
        rng = np.random.default_rng(seed)
        columns[i, :, : len(maps)] = np_render.map_columns(maps)
        tables[i] = np_render._map_table(np.asarray(probabilities, np.float64), rng, slots)
        if settings.patch == "random":  # drawn after the table, from the same generator, as render_batch does
            flip_bytes.append(np_render.coin_flip_bytes(rng, settings.image_size))
    mirror = [mirrors(how) for how in flips or ["none"] * len(systems)]
    return Draws(
        torch.from_numpy(columns),
        torch.from_numpy(tables),
        torch.from_numpy(np.stack(flip_bytes)) if flip_bytes else None,
        torch.tensor(mirror, dtype=torch.bool).reshape(len(systems), 2),
    )


def device_batch_size(num_points: int, device: torch.device) -> int:
    """Images per render call: numpy's batch on a CPU (cache-sized), far more on a GPU (launch overhead)."""
    if device.type == "cpu":
        return batch_size_for(num_points)
    return max(1, DEVICE_POINTS_PER_BATCH // num_points)


def render(draws: Draws, settings: RenderSettings, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """(images (F, S, S) uint8 on `device`, mirrored as `draws.flips` says; converged (F,) on the host)."""
    size = settings.image_size
    images = torch.empty((len(draws), size, size), dtype=torch.uint8, device=device)
    converged = np.empty(len(draws), bool)
    batch = device_batch_size(settings.num_points, device)
    for start in range(0, len(draws), batch):
        chunk = draws.chunk(start, start + batch).to(device)
        xs, ys, converged[start : start + len(chunk)] = _chaos_game(chunk, settings.num_points)
        drawn = _rasterize(xs, ys, chunk.flip_bytes, settings)
        rows, columns = chunk.flips[:, 0, None, None], chunk.flips[:, 1, None, None]
        drawn = torch.where(rows, drawn.flip(-2), drawn)
        images[start : start + len(chunk)] = torch.where(columns, drawn.flip(-1), drawn)
    return images, converged


def _chaos_game(draws: Draws, num_points: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """render._chaos_game: (xs, ys (F, num_points) float32 on the device, converged (F,))."""
    count = len(draws)
    walkers, steps = walker_layout(num_points)
    slots = draws.tables.shape[1]
    index = draws.tables.long()[:, None, :].expand(count, 6, slots)
    coef = torch.gather(draws.columns, 2, index).reshape(count, 3, 2, slots)  # render's coefficient table
    history = torch.empty((count, 2, steps, walkers), dtype=torch.float32, device=coef.device)
    xs, ys, _, converged, _ = np_render.walk(coef, num_points, history, torch)
    return xs, ys, converged


def _flat_index(xs, ys, x_min, y_max, scale_x, scale_y, size: int, low: int) -> torch.Tensor:
    """floor(row) * size + floor(col) + the pad, in xs's dtype: render._mark_points' arithmetic."""
    col = torch.sub(xs, x_min[:, None]).mul_(scale_x[:, None]).floor_()
    row = torch.sub(y_max[:, None], ys).mul_(scale_y[:, None]).floor_()  # y up
    return row.mul_(size).add_(col).add_(low * (size + 1))


def _mark_points(xs, ys, size: int, low: int, high: int) -> torch.Tensor:
    """render._mark_points for every image at once: (F, size, size) bool occupancy grids."""
    count, device = xs.shape[0], xs.device
    finite = xs.isfinite() & ys.isfinite()  # a divergent walk: its finite points only
    bounds = [torch.where(finite, v, torch.inf).amin(1) for v in (xs, ys)] + [
        torch.where(finite, v, -torch.inf).amax(1) for v in (xs, ys)
    ]
    x_min, y_min, x_max, y_max = (b.double() for b in bounds)  # numpy reads them as Python floats
    span_x, span_y = x_max - x_min, y_max - y_min
    # A true division: `number / tensor` would be torch's reciprocal-then-multiply (two roundings).
    extent = torch.full_like(span_x, high - low)
    scale_x = torch.where(span_x > 0, extent / span_x, 0.0)
    scale_y = torch.where(span_y > 0, extent / span_y, 0.0)
    f32 = [v.float() for v in (x_min, y_max, scale_x, scale_y)]
    index = _flat_index(xs, ys, *f32, size, low)
    wide = torch.maximum(span_x, span_y) >= 1e30  # numpy computes these in float64 (keeps x - x_min finite)
    if bool(wide.any()):
        rows = wide.nonzero()[:, 0]
        index[rows] = _flat_index(
            xs[rows].double(), ys[rows].double(), x_min[rows], y_max[rows], scale_x[rows], scale_y[rows], size, low
        ).float()  # exact: integers below 2**24
    cells = size * size
    flat = torch.where(finite, index, 0).long() + torch.arange(count, device=device)[:, None] * cells
    flat = torch.where(finite, flat, count * cells)  # left-out points mark one spare cell past the grids
    grid = torch.zeros(count * cells + 1, dtype=torch.bool, device=device)
    grid[flat.reshape(-1)] = True
    return grid[:-1].reshape(count, size, size)


def _dilate3(grid: torch.Tensor) -> torch.Tensor:
    """render._dilate3: each mark covers its 3x3 patch (the mark and the two cells below and right of it)."""
    padded = torch.nn.functional.pad(grid[:, None].float(), (2, 0, 2, 0))  # 2 columns left, 2 rows above
    return torch.nn.functional.max_pool2d(padded, 3, stride=1)[:, 0] > 0


def _unpack_bits(packed: torch.Tensor, size: int) -> torch.Tensor:
    """np.unpackbits (most significant bit first) of each row, as (F, size, size) bool."""
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
    bits = (packed[:, :, None] >> shifts) & 1
    return bits.reshape(len(packed), -1)[:, : size * size].reshape(-1, size, size).bool()


def _rasterize(xs, ys, flip_bytes, settings: RenderSettings) -> torch.Tensor:
    """render.rasterize: (F, S, S) uint8, `value` where a patch cell is set."""
    size, pad = settings.image_size, settings.pad
    covered = _dilate3(_mark_points(xs, ys, size, pad, size - pad - 3))
    if settings.patch == "random":
        covered &= _unpack_bits(flip_bytes, size)
    return covered.to(torch.uint8).mul_(settings.value)

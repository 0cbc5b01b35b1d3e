"""The three datasets (fractaldb, ofdb, onepfrac), written as an image folder + manifest.

Layout of out_dir:
    images/<class>/<NNNN>.png   8-bit grayscale, class = zero-padded label ("00000")
    manifest.json               kind, seed, params, and per class (label order) its maps,
                                probabilities, fill rate; fractaldb adds its instances
    preview.png                 a grid of the first images

Every random draw comes from a generator seeded by (seed, stream, category, attempt or
instance), never from shared state, so the bytes do not depend on thread scheduling or
the number of cores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from synthvit.config import SyntheticConfig
from synthvit.errors import ConfigError
from synthvit.synthetic import ifs
from synthvit.synthetic.png import write_gray_png
from synthvit.synthetic.render import BURN_IN, TABLE_SIZE, fill_rates, render_batch
from synthvit.synthetic.search import Accepted, Candidate, SearchFailed, batch_size_for, search

MANIFEST_FORMAT = 1
# Seed streams: one per kind of draw, so no two draws share a generator.
SEARCH_STREAM, INSTANCE_STREAM, ONEPFRAC_BASE_STREAM, ONEPFRAC_STREAM = range(4)
# FractalDB instance fluctuation: one coefficient (a..f) of every map times one of these
# (its 25 weight rows: identity + 6 coefficients x 4 weights), then one of 4 flips.
INSTANCE_WEIGHTS = (0.8, 0.9, 1.1, 1.2)
FLIPS = ("none", "vertical", "horizontal", "both")
PREVIEW_TILES, PREVIEW_COLUMNS, PREVIEW_TILE_SIZE = 64, 8, 128


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _render_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**63))


class _Progress:
    """tqdm on a terminal; elsewhere (CI, DVC logs) a plain line every 10%."""

    def __init__(self, total: int, enabled: bool, label: str):
        self.total, self.done, self.label, self.started = total, 0, label, time.perf_counter()
        self.bar = tqdm(total=total, desc=label, unit="img", leave=False) if enabled and sys.stderr.isatty() else None
        self.lines = enabled and self.bar is None
        self.next_line = 0.1

    def update(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        if self.lines and self.done >= self.next_line * self.total:
            print(f"{self.label}: {self.done}/{self.total} images, {time.perf_counter() - self.started:.1f} s",
                  file=sys.stderr, flush=True)
            while self.next_line * self.total <= self.done:
                self.next_line += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _ImageFolder:
    """Writes images/<class>/<NNNN>.png on the worker pool and keeps preview tiles."""

    def __init__(self, root: Path, num_classes: int, images_per_class: int, image_size: int, pool, progress: _Progress):
        self.root, self.pool, self.progress = root, pool, progress
        self.class_width = max(5, len(str(num_classes - 1)))
        self.image_width = max(4, len(str(images_per_class - 1)))
        self.pending = []
        # Preview: a row of instances per class (fractaldb), or one image per class, 8 a row.
        shown = min(PREVIEW_COLUMNS, images_per_class)
        self.columns = shown if shown > 1 else PREVIEW_COLUMNS
        self.tile_keys = [(c, i) for c in range(min(num_classes, PREVIEW_TILES // shown)) for i in range(shown)]
        self.tile_size = min(PREVIEW_TILE_SIZE, image_size)
        self.tiles = {}
        for category in range(num_classes):
            (root / "images" / self.class_name(category)).mkdir(parents=True)

    def class_name(self, category: int) -> str:
        return f"{category:0{self.class_width}d}"

    def file_name(self, instance: int) -> str:
        return f"{instance:0{self.image_width}d}.png"

    def write(self, category: int, instance: int, image: np.ndarray) -> None:
        """Called from a worker thread (fractaldb instances) or the main thread (search hits)."""
        write_gray_png(self.root / "images" / self.class_name(category) / self.file_name(instance), image)
        if (category, instance) in self.tile_keys:
            tile = Image.fromarray(image).resize((self.tile_size,) * 2, Image.Resampling.BOX)
            self.tiles[(category, instance)] = np.asarray(tile)

    def write_later(self, category: int, instance: int, image: np.ndarray) -> None:
        self.pending.append(self.pool.submit(self.write, category, instance, image))
        self.progress.update()

    def finish(self) -> None:
        for future in self.pending:
            future.result()  # re-raises a failed write

    def preview(self) -> np.ndarray:
        tiles = [self.tiles[key] for key in self.tile_keys]
        columns = min(self.columns, len(tiles))
        rows, gap, size = math.ceil(len(tiles) / columns), 2, self.tile_size
        step = size + gap
        grid = np.full((rows * step + gap, columns * step + gap), 96, np.uint8)  # gray gaps
        for k, tile in enumerate(tiles):
            top, left = gap + (k // columns) * step, gap + (k % columns) * step
            grid[top : top + size, left : left + size] = tile
        return grid


def _search_draw(cfg: SyntheticConfig, seed: int):
    """FractalDB/OFDB category search draw for (category, attempt)."""

    def draw(category: int, attempt: int) -> Candidate:
        rng = _rng(seed, SEARCH_STREAM, category, attempt)
        maps = ifs.random_ifs(rng, cfg.min_maps, cfg.max_maps)
        return Candidate(maps, ifs.map_probabilities(maps), _render_seed(rng))

    return draw


def _search(cfg: SyntheticConfig, draw, num_categories: int, pool, folder: _ImageFolder | None, failure: str):
    def keep(category: int, found: Accepted) -> None:
        if folder is not None:
            folder.write_later(category, 0, found.image)
        found.image = None  # 1,000 kept images at 362 px would be 130 MB

    try:
        return search(num_categories, draw, cfg.image_size, cfg.num_points, cfg.fill_rate, cfg.max_attempts, pool, keep)
    except SearchFailed as failed:
        raise ConfigError(
            "synthetic.fill_rate", cfg.fill_rate,
            failure.format(category=failed.category, best=failed.best_fill_rate)
            + f" within synthetic.max_attempts={cfg.max_attempts} draws; lower synthetic.fill_rate"
            " or raise synthetic.max_attempts",
        ) from None


def _class_entry(name: str, found: Accepted) -> dict:
    candidate = found.candidate
    return {
        "name": name,
        "maps": candidate.maps.tolist(),
        "probabilities": candidate.probabilities.tolist(),
        "fill_rate": found.fill_rate,
        "attempts": found.attempts,
        "render_seed": candidate.render_seed,
        **candidate.extra,
    }


def _instance_variation(seed: int, category: int, instance: int) -> dict:
    rng = _rng(seed, INSTANCE_STREAM, category, instance)
    row = int(rng.integers(1 + len(ifs.COEFFICIENT_NAMES) * len(INSTANCE_WEIGHTS)))
    slot, weight = (None, 1.0) if row == 0 else divmod(row - 1, len(INSTANCE_WEIGHTS))
    return {
        "coefficient": None if slot is None else ifs.COEFFICIENT_NAMES[slot],
        "weight": 1.0 if slot is None else INSTANCE_WEIGHTS[weight],
        "flip": FLIPS[int(rng.integers(len(FLIPS)))],
        "render_seed": _render_seed(rng),
    }


def _flip(image: np.ndarray, flip: str) -> np.ndarray:
    if flip in ("vertical", "both"):
        image = image[::-1]
    if flip in ("horizontal", "both"):
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def _fractaldb_instances(cfg: SyntheticConfig, seed: int, classes: list[dict], pool, folder: _ImageFolder) -> None:
    """Instances 1.. of every category (instance 0 is the searched image itself)."""
    for entry in classes:
        entry["instances"] = [{"coefficient": None, "weight": 1.0, "flip": "none",
                               "render_seed": entry["render_seed"], "fill_rate": entry["fill_rate"]}]
    jobs = [(c, i) for c in range(len(classes)) for i in range(1, cfg.instances_per_class)]

    def render_chunk(chunk):
        variations = [_instance_variation(seed, c, i) for c, i in chunk]
        systems = []
        for (c, _), v in zip(chunk, variations):
            maps = np.asarray(classes[c]["maps"])
            if v["coefficient"] is not None:
                maps = ifs.scale_coefficient(maps, ifs.COEFFICIENT_NAMES.index(v["coefficient"]), v["weight"])
            systems.append((maps, ifs.map_probabilities(maps)))
        images = render_batch(systems, cfg.image_size, cfg.num_points, [v["render_seed"] for v in variations])
        for (c, i), v, image, rate in zip(chunk, variations, images, fill_rates(images)):
            folder.write(c, i, _flip(image, v["flip"]))
            v["fill_rate"] = float(rate)
        return variations

    batch = batch_size_for(cfg.num_points)
    chunks = [jobs[k : k + batch] for k in range(0, len(jobs), batch)]
    for chunk, variations in zip(chunks, pool.map(render_chunk, chunks)):
        for (c, _), v in zip(chunk, variations):
            classes[c]["instances"].append(v)
        folder.progress.update(len(chunk))


def _onepfrac(cfg: SyntheticConfig, seed: int, pool, folder: _ImageFolder) -> tuple[dict, list[Accepted]]:
    """One sigma-factor IFS (searched until it reaches the fill rate), then perturbed copies."""

    def draw_base(_, attempt: int) -> Candidate:
        rng = _rng(seed, ONEPFRAC_BASE_STREAM, attempt)
        maps = ifs.sigma_factor_ifs(rng, cfg.onepfrac_maps, cfg.sigma)
        return Candidate(maps, ifs.map_probabilities(maps), _render_seed(rng))

    failure = (f"no sigma-factor IFS ({cfg.onepfrac_maps} maps, synthetic.sigma={cfg.sigma}) reached it"
               " (best fill rate {best:.3f})")
    [base] = _search(cfg, draw_base, 1, pool, None, failure)
    base_maps = base.candidate.maps

    def draw(category: int, attempt: int) -> Candidate:
        rng = _rng(seed, ONEPFRAC_STREAM, category, attempt)
        maps, multipliers = ifs.perturb(base_maps, rng, cfg.delta)
        return Candidate(maps, ifs.map_probabilities(maps), _render_seed(rng), {"multipliers": multipliers.tolist()})

    failure = (f"category {{category}}: no perturbation (synthetic.delta={cfg.delta}) of the base IFS reached it"
               " (best fill rate {best:.3f})")
    found = _search(cfg, draw, cfg.num_classes, pool, folder, failure)
    base_entry = {
        "maps": base_maps.tolist(),
        "probabilities": base.candidate.probabilities.tolist(),
        "sigma_factor": ifs.sigma_factor(base_maps),
        "fill_rate": base.fill_rate,
        "attempts": base.attempts,
        "render_seed": base.candidate.render_seed,
    }
    return base_entry, found


def _build(cfg: SyntheticConfig, seed: int, root: Path, progress: bool, workers: int) -> dict:
    per_class = cfg.instances_per_class if cfg.kind == "fractaldb" else 1
    bar = _Progress(cfg.num_classes * per_class, progress, f"synthetic {cfg.kind}")
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": cfg.kind,
        "seed": seed,
        "params": dataclasses.asdict(cfg),
        "images_per_class": per_class,
        "map_formula": "x' = a*x + b*y + e; y' = c*x + d*y + f; each map is [a, b, c, d, e, f]",
        "renderer": {"patch": "3x3, random binary mask per point, later patches overwrite",
                     "burn_in": BURN_IN, "probability_slots": TABLE_SIZE},
    }
    try:
        with ThreadPoolExecutor(workers) as pool:
            folder = _ImageFolder(root, cfg.num_classes, per_class, cfg.image_size, pool, bar)
            if cfg.kind == "onepfrac":
                manifest["base"], found = _onepfrac(cfg, seed, pool, folder)
            else:
                failure = "category {category} found no IFS reaching it (best fill rate {best:.3f})"
                found = _search(cfg, _search_draw(cfg, seed), cfg.num_classes, pool, folder, failure)
            classes = [_class_entry(folder.class_name(c), f) for c, f in enumerate(found)]
            if cfg.kind == "fractaldb":
                _fractaldb_instances(cfg, seed, classes, pool, folder)
            folder.finish()
    finally:
        bar.close()
    manifest["classes"] = classes
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    Image.fromarray(folder.preview()).save(root / "preview.png")
    return manifest


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace out_dir by the finished staging folder (a rename: never half-written)."""
    if out_dir.exists() or out_dir.is_symlink():
        retired = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, retired)
        os.replace(staging, out_dir)
        if retired.is_dir() and not retired.is_symlink():
            shutil.rmtree(retired)
        else:
            retired.unlink()
    else:
        os.replace(staging, out_dir)


def write_dataset(cfg: SyntheticConfig, seed: int, out_dir: Path, progress: bool = True, workers: int | None = None) -> dict:
    """generate_dataset with an explicit thread count (the output does not depend on it)."""
    cfg.validate("synthetic")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        manifest = _build(cfg, seed, staging, progress, workers or default_workers())
        _swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest

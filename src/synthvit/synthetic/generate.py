"""The three datasets (fractaldb, ofdb, onepfrac): their manifest, a preview, and images when asked.

Layout of out_dir (synthetic.store says which images are written):
    manifest.json               always; see below
    preview.png                 always: a grid of the first images
    shards/<first>-<last>.npy   store=shards: uint8 (images, S, S), whole categories, flat index order
    images/<class>/<NNNN>.png   store=images: 8-bit grayscale (or RGB, synthetic.color), class = zero-padded
                                label ("00000"); fractaldb: instances_per_class files, others: 0000.png

manifest.json: format, kind, seed, params (the SyntheticConfig), images_per_class, store,
image_index, [image_path], map_formula, acceptance, renderer, [shards: file, classes
[first, last]], [onepfrac: base {maps, probabilities, sigma_factor, fill_rate, attempts,
render_seed}], and classes in label order, one line each:
    name, maps [[a, b, c, d, e, f], ...], probabilities (sum 1, ~|det|), fill_rate (the
    acceptance score: fill of the official 512-px search render, search.py), attempts
    (draws the search used), render_seed (image 0000, with the params' render settings);
    ofdb adds rendered_maps (what image 0000 draws: every map's a x 0.2); onepfrac
    adds multipliers (maps / base maps); fractaldb with store=images adds instances
    [{file, coefficient, weight, flip, pattern, render_seed, converged}], instance 0 being
    the searched image (otherwise they follow from draws.instance_variation, unlisted).
Any image re-renders from the manifest (source.ManifestImages), and every written image
is rendered through it.

Every random draw is keyed by (seed, stream, category, attempt or instance) (draws.py),
so the bytes depend neither on scheduling nor on the number of cores. The folder is
built beside out_dir and renamed into place when complete.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from synthvit.config import SyntheticConfig
from synthvit.files import remove_stale_temps, temp_path
from synthvit.synthetic import draws, ifs
from synthvit.synthetic.parallel import default_workers, worker_pool
from synthvit.synthetic.png import encode_png
from synthvit.synthetic.render import MAX_BURN_IN, TABLE_SIZE, TOLERANCE
from synthvit.synthetic.search import SCORE_PAD, SCORE_POINTS, SCORE_SIZE, Accepted, Rule, search
from synthvit.synthetic.source import ManifestImages, worker_tasks

MANIFEST_FORMAT = 2  # 2: store, image_index; FractalDB instances listed only with store=images
PREVIEW_TILES, PREVIEW_COLUMNS, PREVIEW_TILE_SIZE = 64, 8, 128
SHARD_IMAGES = 65_536  # images a shard holds, about (256 MB at 64 px): whole categories


class _Progress:
    """tqdm on a terminal; elsewhere (CI, DVC logs) a plain line every 10%."""

    def __init__(self, total: int, enabled: bool, label: str, unit: str):
        self.total, self.done, self.label, self.unit, self.started = total, 0, label, unit, time.perf_counter()
        drawn = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=label, postfix=unit, leave=False, disable=not drawn)
        self.lines = enabled and not drawn

    def update(self, count: int = 1) -> None:
        self.done += count
        self.bar.update(count)  # (a no-op when the bar is off)
        if self.lines and 10 * self.done // self.total > 10 * (self.done - count) // self.total:  # a tenth more
            seconds = time.perf_counter() - self.started
            print(f"{self.label}: {self.done}/{self.total} {self.unit}, {seconds:.1f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where image `instance` of class `category` goes."""

    root: Path
    num_classes: int
    images_per_class: int

    def class_name(self, category: int) -> str:
        return f"{category:0{max(5, len(str(self.num_classes - 1)))}d}"

    def file_name(self, instance: int) -> str:
        return f"{instance:0{max(4, len(str(self.images_per_class - 1)))}d}.png"

    def path(self, category: int, instance: int) -> Path:
        return self.root / "images" / self.class_name(category) / self.file_name(instance)


def _entry(found: Accepted, **fields) -> dict:
    """An accepted draw as the manifest lists it; `fields` (1p-frac's base: sigma_factor) go after the probabilities."""
    candidate = found.candidate
    entry = {
        "maps": candidate.maps.tolist(),
        "probabilities": candidate.probabilities.tolist(),
        **fields,
        "fill_rate": found.fill_rate,
        "attempts": found.attempts,
        "render_seed": candidate.render_seed,
        **candidate.extra,
    }
    if candidate.render_maps is not None:
        entry["rendered_maps"] = candidate.render_maps.tolist()
    return entry


def _write_pngs(indices, *, source: ManifestImages, layout: _Layout) -> list[bool]:
    """Render and write images (flat indices) as PNG files (in a worker); their converged flags."""
    images, converged = source.render(indices)
    for index, image in zip(indices, images):
        layout.path(*divmod(index, layout.images_per_class)).write_bytes(encode_png(image, source.settings.rgb))
    return converged.tolist()


def _write_images(classes: list[dict], source: ManifestImages, pool, layout: _Layout, progress) -> None:
    """Write every image as a PNG file; FractalDB lists its instances in the manifest, instance 0
    being the searched image itself."""
    per_class = layout.images_per_class
    tasks = worker_tasks(list(range(len(classes) * per_class)), source)
    write = functools.partial(_write_pngs, source=source, layout=layout)
    for task, converged in zip(tasks, pool.map(write, tasks)):
        for index, ok in zip(task, converged):
            category, instance = divmod(index, per_class)
            if source.kind != "fractaldb":
                continue
            if instance == 0:  # the searched image: it passed the search, so it is listed as converged
                seed = classes[category]["render_seed"]
                variation = {"coefficient": None, "weight": 1.0, "flip": "none", "pattern": 0, "render_seed": seed}
                ok = True
            else:
                variation = draws.instance_variation(source.seed, category, instance, source.cfg.instance_weights)
            listed = {"file": layout.file_name(instance), **variation, "converged": ok}
            classes[category].setdefault("instances", []).append(listed)
        progress.update(len(task))


def _write_shards(root: Path, source: ManifestImages, pool, layout: _Layout, progress) -> list[dict]:
    """shards/<first class>-<last class>.npy: uint8 (images, S, S) in flat index order, about
    SHARD_IMAGES images a shard (whole categories); returns the manifest's list of them."""
    per_class = layout.images_per_class
    categories = max(1, SHARD_IMAGES // per_class)
    (root / "shards").mkdir()
    shards = []
    for first in range(0, layout.num_classes, categories):
        last = min(first + categories, layout.num_classes) - 1
        name = f"shards/{layout.class_name(first)}-{layout.class_name(last)}.npy"
        size = source.settings.image_size
        indices = list(range(first * per_class, (last + 1) * per_class))
        shard = np.lib.format.open_memmap(root / name, "w+", np.uint8, (len(indices), size, size))
        done = 0
        for images, _ in pool.map(source.render, worker_tasks(indices, source)):
            shard[done : done + len(images)] = images
            done += len(images)
            progress.update(len(images))
        shard.flush()
        del shard
        shards.append({"file": name, "classes": [first, last]})
    return shards


def _preview(source: ManifestImages, num_classes: int, per_class: int) -> np.ndarray:
    """A grid of the first images: a row of instances per class, or 8 classes a row."""
    shown = min(PREVIEW_COLUMNS, per_class)
    columns = shown if shown > 1 else PREVIEW_COLUMNS
    keys = [(c, i) for c in range(min(num_classes, PREVIEW_TILES // shown)) for i in range(shown)]
    columns = min(columns, len(keys))
    image_size = source.settings.image_size
    size, gap = min(PREVIEW_TILE_SIZE, image_size), 2
    step = size + gap
    grid = np.full((math.ceil(len(keys) / columns) * step + gap, columns * step + gap), 96, np.uint8)
    images, _ = source.render([c * per_class + i for c, i in keys])
    for k, image in enumerate(images):
        tile = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BOX))
        top, left = gap + (k // columns) * step, gap + (k % columns) * step
        grid[top : top + size, left : left + size] = tile
    return grid


def _manifest_json(manifest: dict) -> str:
    """Indented header, then one compact line per class: FractalDB-1k with 100 instances
    a class stays ~11 MB, and a class is one line to grep."""
    head = json.dumps({k: v for k, v in manifest.items() if k != "classes"}, indent=1)
    lines = ",\n".join("  " + json.dumps(entry, separators=(",", ":")) for entry in manifest["classes"])
    return head[:-2] + ',\n "classes": [\n' + lines + "\n ]\n}\n"


def _build(cfg: SyntheticConfig, seed: int, root: Path, progress: bool, workers: int) -> dict:
    per_class = cfg.instances_per_class if cfg.kind == "fractaldb" else 1
    layout = _Layout(root, cfg.num_classes, per_class)
    root.mkdir(parents=True)
    if cfg.store == "images":
        for category in range(cfg.num_classes):
            layout.path(category, 0).parent.mkdir(parents=True)
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": cfg.kind,
        "seed": seed,
        "params": cfg.model_dump(),
        "images_per_class": per_class,
        "store": cfg.store,
        "image_index": "category * images_per_class + instance; instance 0 is the searched image (render_seed), "
        + (
            "instance i > 0 draws synthvit.synthetic.draws.instance_variation(seed, category, i, "
            "params.instance_weights)"
            if cfg.kind == "fractaldb"
            else "the only one"
        ),
        **({"image_path": "images/<class name>/<instance, 4+ digits>.png"} if cfg.store == "images" else {}),
        "map_formula": "x' = a*x + b*y + e; y' = c*x + d*y + f; each map is [a, b, c, d, e, f]",
        "acceptance": {
            "render": f"{SCORE_SIZE} px, {SCORE_POINTS} points, pad {SCORE_PAD}, "
            + ("3x3 random-mask patches" if cfg.kind == "onepfrac" else "1 px per point"),
            "keep": (f"fill > {cfg.onepfrac_fill_rate}" if cfg.kind == "onepfrac" else f"fill >= {cfg.fill_rate}")
            + ", walk converged to an attractor",
        },
        "renderer": {
            "patch": (
                "3x3, random binary mask per point, later patches overwrite"
                if cfg.patch == "random"
                else "3x3, solid (all nine cells lit) per point"
            ),
            "burn_in": f"until the walk forgets its start to {TOLERANCE} (at most {MAX_BURN_IN} steps)",
            "probability_slots": TABLE_SIZE,
        },
    }
    files = 0 if cfg.store == "manifest" else cfg.num_classes * per_class
    unit = "categories found" + (", then images written" if files else "")
    bar = _Progress(cfg.num_classes + files, progress, f"synthetic {cfg.kind}", unit)

    try:
        with worker_pool(workers) as pool:
            if cfg.kind == "onepfrac":
                rule = Rule(cfg.onepfrac_fill_rate, patched=True, strict=True)
                # 1p-frac's single IFS: the first sigma-factor draw that passes the categories' own rule. The
                # official code checks no base; a base whose image stays below the threshold makes its category
                # loop run forever (seen: seed 7, patched fill 0.033), so here the base must pass it too.
                failure = (
                    f"no sigma-factor IFS ({cfg.onepfrac_maps} maps, synthetic.sigma={cfg.sigma}) exceeded it"
                    " (best fill rate {best:.3f})"
                )
                draw = functools.partial(draws.sigma_factor_draw, seed, cfg.onepfrac_maps, cfg.sigma)
                [base] = search(1, draw, rule, cfg.max_attempts, pool, workers, failure)
                manifest["base"] = _entry(base, sigma_factor=ifs.sigma_factor(base.candidate.maps))
                draw = functools.partial(draws.perturbation_draw, seed, base.candidate.maps.tolist(), cfg.delta)
                failure = (
                    f"category {{category}}: no perturbation (synthetic.delta={cfg.delta}) of the base IFS"
                    " exceeded it (best fill rate {best:.3f})"
                )
            else:
                weights = draws.OFDB_FIRST_ROW if cfg.kind == "ofdb" else None
                draw = functools.partial(draws.search_draw, seed, cfg.min_maps, cfg.max_maps, weights)
                rule = Rule(cfg.fill_rate)
                failure = "category {category} found no IFS reaching it (best fill rate {best:.3f})"
            found = search(
                cfg.num_classes, draw, rule, cfg.max_attempts, pool, workers, failure, lambda *_: bar.update()
            )
            manifest["classes"] = [{"name": layout.class_name(c), **_entry(f)} for c, f in enumerate(found)]
            source = ManifestImages(manifest)
            if cfg.store == "images":
                _write_images(manifest["classes"], source, pool, layout, bar)
            elif cfg.store == "shards":
                manifest["shards"] = _write_shards(root, source, pool, layout, bar)
    finally:
        bar.close()
    (root / "manifest.json").write_text(_manifest_json(manifest))
    Image.fromarray(_preview(source, cfg.num_classes, per_class)).save(root / "preview.png")
    return manifest


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace out_dir by the finished staging folder (a rename: never half-written)."""
    retired = temp_path(out_dir, "old")
    if out_dir.exists() or out_dir.is_symlink():
        os.replace(out_dir, retired)
    os.replace(staging, out_dir)
    if retired.is_dir() and not retired.is_symlink():
        shutil.rmtree(retired)
    else:
        retired.unlink(missing_ok=True)


def generate_dataset(
    cfg: SyntheticConfig,
    seed: int,
    out_dir: Path,
    progress: bool = True,
    workers: int | None = None,
    before_publishing=lambda: None,
) -> dict:
    """Write the dataset that cfg describes into out_dir (replaced atomically); return its manifest.
    `before_publishing` runs once the set is staged, before it replaces out_dir (it may raise to stop).

    Same cfg and seed give byte-identical files on any machine and for any number of
    `workers` processes. Raises UserError when a category cannot reach cfg.fill_rate in
    cfg.max_attempts draws.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir, kinds=("tmp", "old"))  # what a killed run left: a staging folder, a retired set
    staging = temp_path(out_dir)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        manifest = _build(cfg, seed, staging, progress, workers or default_workers())
        before_publishing()
        _swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest

"""Side by side with the official generators: re-score FractalDB's own categories, draw a grid.

`synthvit bench synthetic --official PATH [--grid out.png]` reads FractalDB-1k category
parameters (its data/csv_rate0.2_category1000 folder, one CSV per category with rows
a, b, c, d, e, f, probability; or tests/fixtures/fractaldb1k/*.csv, the same rows with the
category name first), scores them with synthvit's acceptance rule and, with --grid, draws
each of the first categories three ways: FractalDB's algorithm (reference.py: one walk
from the origin, every point a random 3x3 mask, 362 px, 200k points, 6-px pad, gray 127),
synthvit's faithful preset, and synthvit's training-resolution render (64 px, 20k points,
shown enlarged) with random-mask and with solid patches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from synthvit.commands.bench.reference import render_reference
from synthvit.errors import UserError
from synthvit.synthetic.render import render_ifs
from synthvit.synthetic.search import Rule

FAITHFUL = {"image_size": 362, "num_points": 200_000, "pad": 6, "value": 127}
TRAINING = {"image_size": 64, "num_points": 20_000}
TILE, GAP = 181, 4


def load_official(path: Path) -> dict[str, np.ndarray]:
    """{category name: (K, 7) rows a..f, probability}, in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.csv"), key=lambda f: f.stem)
        categories = {f.stem: np.atleast_2d(np.loadtxt(f, delimiter=",")) for f in files}
    elif path.is_file():
        rows = np.genfromtxt(path, delimiter=",", dtype=str, comments="#")
        categories = {name: rows[rows[:, 0] == name, 1:].astype(float) for name in dict.fromkeys(rows[:, 0])}
    else:
        raise UserError(f"--official {path}: no such file or folder; pass FractalDB's csv_rate0.2_category1000 folder")
    if not categories or any(c.shape[1] != 7 for c in categories.values()):
        raise UserError(f"--official {path}: expected rows a,b,c,d,e,f,probability per category (FractalDB's CSVs)")
    return categories


def _system(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rows[:, :6], rows[:, 6] / rows[:, 6].sum()


def rescore(categories: dict[str, np.ndarray], fill_rate: float = 0.2) -> dict:
    """How many official categories synthvit's rule keeps, and their map-count mix."""
    systems = [_system(rows) for rows in categories.values()]
    rates, converged = [], []
    for start in range(0, len(systems), 20):
        r, c = Rule(fill_rate).score(
            systems[start : start + 20], list(range(start, start + len(systems[start : start + 20])))
        )
        rates += r.tolist()
        converged += c.tolist()
    kept = [Rule(fill_rate).keeps(r, c) for r, c in zip(rates, converged)]
    return {
        "categories": len(systems),
        "kept": int(sum(kept)),
        "converged": int(sum(converged)),
        "median_fill": float(np.median(rates)),
        "map_counts": np.bincount([len(s[0]) for s in systems], minlength=8)[2:].tolist(),
    }


def _tile(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((TILE, TILE), Image.Resampling.BOX))


def write_grid(categories: dict[str, np.ndarray], path: Path, count: int = 4) -> None:
    """Rows: categories; columns: FractalDB's algorithm, synthvit faithful, synthvit 64 px (random, solid patches)."""
    rows = []
    for seed, rows_ in enumerate(list(categories.values())[:count]):
        maps, probabilities = _system(rows_)
        official = render_reference(
            maps,
            probabilities,
            FAITHFUL["image_size"],
            FAITHFUL["num_points"],
            seed,
            pad=FAITHFUL["pad"],
            value=FAITHFUL["value"],
            burn_in=0,
        )
        faithful = render_ifs(maps, probabilities, seed=seed, **FAITHFUL)
        training = render_ifs(maps, probabilities, seed=seed, **TRAINING)
        solid = render_ifs(maps, probabilities, seed=seed, patch="full", **TRAINING)
        rows.append([_tile(official), _tile(faithful), _tile(training), _tile(solid)])
    grid = np.full((len(rows) * (TILE + GAP) + GAP, len(rows[0]) * (TILE + GAP) + GAP), 64, np.uint8)
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            top, left = GAP + r * (TILE + GAP), GAP + c * (TILE + GAP)
            grid[top : top + TILE, left : left + TILE] = tile
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path, optimize=True)

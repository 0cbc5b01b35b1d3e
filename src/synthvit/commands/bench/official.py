"""Side by side with the official generators: re-score FractalDB's own categories, draw a grid.

`synthvit bench synthetic --official PATH [--grid out.png]` reads FractalDB-1k category
parameters (its data/csv_rate0.2_category1000 folder, one CSV per category with rows
a, b, c, d, e, f, probability; or tests/helpers/fixtures/fractaldb1k/*.csv, the same rows with the
category name first), scores them with synthvit's acceptance rule and, with --grid, draws
each of the first categories three ways: FractalDB's algorithm (reference.py: one walk
from the origin, every point a random 3x3 mask, 362 px, 200k points, 6-px pad, gray 127),
synthvit's faithful preset, and synthvit's training-resolution render (64 px, 20k points,
shown enlarged) with random-mask and with solid patches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from synthvit.commands.bench.reference import render_reference
from synthvit.errors import UserError
from synthvit.synthetic.render import render_ifs
from synthvit.synthetic.search import SCORE_BATCH, Rule

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
    systems, rule = [_system(rows) for rows in categories.values()], Rule(fill_rate)
    seeds = list(range(len(systems)))
    scored = [rule.score(systems[k : k + SCORE_BATCH], seeds[k : k + SCORE_BATCH]) for k in seeds[::SCORE_BATCH]]
    rates, converged = (np.concatenate(column) for column in zip(*scored))
    return {
        "categories": len(systems),
        "kept": int(sum(rule.keeps(r, c) for r, c in zip(rates, converged))),
        "converged": int(converged.sum()),
        "median_fill": float(np.median(rates)),
        "map_counts": np.bincount([len(s[0]) for s in systems], minlength=8)[2:].tolist(),
    }


def write_grid(categories: dict[str, np.ndarray], path: Path, count: int = 4) -> None:
    """Rows: categories; columns: FractalDB's algorithm, synthvit faithful, synthvit 64 px (random, solid patches)."""
    tiles = []
    for seed, parameters in enumerate(list(categories.values())[:count]):
        maps, probabilities = _system(parameters)
        tiles += [
            render_reference(maps, probabilities, seed=seed, burn_in=0, **FAITHFUL),
            render_ifs(maps, probabilities, seed=seed, **FAITHFUL),
            render_ifs(maps, probabilities, seed=seed, **TRAINING),
            render_ifs(maps, probabilities, seed=seed, patch="full", **TRAINING),
        ]
    resized = [np.asarray(Image.fromarray(tile).resize((TILE, TILE), Image.Resampling.BOX)) for tile in tiles]
    grid = make_grid(torch.from_numpy(np.stack(resized))[:, None], nrow=4, padding=GAP, pad_value=64)[0]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.numpy()).save(path, optimize=True)

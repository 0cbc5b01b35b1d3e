"""Iterated function systems the renderer tests share: classic fractals, hard cases, FractalDB's own categories."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthvit.commands.bench import official
from synthvit.synthetic import ifs

FIXTURES = Path(__file__).parent / "fixtures"
SIERPINSKI = np.array([[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0.25, 0.5]])
FERN = np.array(
    [
        [0.0, 0.0, 0.0, 0.16, 0.0, 0.0],
        [0.85, 0.04, -0.04, 0.85, 0.0, 1.6],
        [0.2, -0.26, 0.23, 0.22, 0.0, 1.6],
        [-0.15, 0.28, 0.26, 0.24, 0.0, 0.44],
    ]
)
FERN_PROBABILITIES = np.array([0.01, 0.85, 0.07, 0.07])


def official_categories() -> dict[str, np.ndarray]:
    """The first 100 FractalDB-1k categories: {name: (K, 7) rows a..f, probability} (MIT, see fixtures)."""
    return official.load_official(FIXTURES / "fractaldb1k" / "categories_00000-00099.csv")


def slow_rotations(shift: float = 200.0) -> np.ndarray:
    """Two rotations scaled by 0.97 (the walk forgets its start ~3% a step), moved so the
    attractor lies ~280 units from the origin: a 32-step burn-in leaves visible paths in."""
    maps = []
    for angle, e, f in [(0.3, 3.0, 0.0), (-2.0, -3.0, 5.0)]:
        linear = 0.97 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        offset = np.array([e, f]) + shift - linear @ np.array([shift, shift])
        maps.append([*linear.ravel(), *offset])
    return np.array(maps)


EXPLODING = np.array([[3.0, 0.5, -0.2, 2.5, 1.0, 1.0], [-2.0, 1.0, 0.3, 2.0, 0.0, 1.0]])  # overflows to inf
BARELY = np.array([[0.999, 0, 0, 0.999, 1, 0], [0.999, 0, 0, 0.999, 0, 1]])  # contracts too slowly
# Expands by 1.16 a step: finite points spanning ~1e37, which numpy rasterises in float64.
WIDE = np.array([[1.16, 0.1, 0, 1.16, 1, 0], [1.16, 0, -0.1, 1.16, 0, 1]])
SYSTEMS = [
    (SIERPINSKI, [1 / 3] * 3),
    (FERN, FERN_PROBABILITIES),
    (slow_rotations(), [0.5, 0.5]),
    (EXPLODING, [0.5, 0.5]),
    (BARELY, [0.5, 0.5]),
    (WIDE, [0.3, 0.7]),
    (FERN * 0.9, FERN_PROBABILITIES),
]
SEEDS = [11, 12, 13, 14, 15, 16, 17]


def search_draws(count: int) -> list:
    """Systems as the category search draws them (coefficients U(-1, 1)): some diverge."""
    rng = np.random.default_rng(0)
    return [(maps, ifs.map_probabilities(maps)) for maps in (ifs.random_ifs(rng, 2, 7) for _ in range(count))]

"""Iterated function systems: drawing the affine maps and their probabilities.

A map is six numbers (a, b, c, d, e, f):  x' = a*x + b*y + e,  y' = c*x + d*y + f
(FractalDB's order). A system is a (K, 6) float64 array; its map probabilities are
always proportional to |det| = |a*d - b*c|, so a map that shrinks area less is drawn
more often and every part of the attractor gets a fair share of points.
"""

from __future__ import annotations

import numpy as np

COEFFICIENT_NAMES = ("a", "b", "c", "d", "e", "f")


def map_probabilities(maps: np.ndarray) -> np.ndarray:
    """|det| of each map, normalised to sum to 1 (uniform when every map is singular)."""
    maps = np.asarray(maps, dtype=np.float64)
    dets = np.abs(maps[:, 0] * maps[:, 3] - maps[:, 1] * maps[:, 2])
    total = dets.sum()
    if not np.isfinite(total) or total <= 0:
        return np.full(len(maps), 1.0 / len(maps))
    return dets / total


def random_ifs(rng: np.random.Generator, min_maps: int, max_maps: int) -> np.ndarray:
    """FractalDB/OFDB category search draw: min..max maps, every coefficient U(-1, 1)."""
    num_maps = int(rng.integers(min_maps, max_maps + 1))
    return rng.uniform(-1.0, 1.0, size=(num_maps, 6))


def sigma_factor_singular_values(rng: np.random.Generator, num_maps: int, sigma: float) -> np.ndarray:
    """(num_maps, 2) singular values s1 >= s2 in [0, 1] with sum(s1 + 2*s2) == sigma.

    Anderson & Farrell's sigma-factor (used by 1p-frac): sigma measures how much the maps
    keep of the plane; ~3.5 for two maps gives well-filled, non-degenerate fractals. Pairs
    are drawn one at a time, each from the range that still lets the rest reach sigma.
    """
    if not 0 < sigma <= 3 * num_maps:
        raise ValueError(f"sigma={sigma} must be in (0, {3 * num_maps}] for {num_maps} maps")
    values = np.empty((num_maps, 2))
    remaining = float(sigma)
    for i in range(num_maps):
        pairs_left = num_maps - 1 - i  # each later pair can take between 0 and 3
        if pairs_left == 0:
            s1 = rng.uniform(remaining / 3, min(1.0, remaining))
            s2 = (remaining - s1) / 2
        else:
            s1 = rng.uniform(max(0.0, (remaining - 3 * pairs_left) / 3), min(1.0, remaining))
            s2 = rng.uniform(max(0.0, (remaining - 3 * pairs_left - s1) / 2), min(s1, (remaining - s1) / 2))
        values[i] = s1, s2
        remaining -= s1 + 2 * s2
    return values


def _random_orthogonal(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 2x2 rotation, with each axis flipped with probability 1/2."""
    angle = rng.uniform(-np.pi, np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return rotation * rng.choice([-1.0, 1.0], size=2)


def sigma_factor_ifs(rng: np.random.Generator, num_maps: int, sigma: float) -> np.ndarray:
    """A contractive system with sigma-factor `sigma`: linear part U diag(s1, s2) V, shift U(-1, 1)."""
    maps = np.empty((num_maps, 6))
    for i, (s1, s2) in enumerate(sigma_factor_singular_values(rng, num_maps, sigma)):
        linear = _random_orthogonal(rng) @ np.diag([s1, s2]) @ _random_orthogonal(rng)
        maps[i, :4] = linear.ravel()  # a, b, c, d
        maps[i, 4:] = rng.uniform(-1.0, 1.0, size=2)  # e, f
    return maps


def sigma_factor(maps: np.ndarray) -> float:
    """sum(s1 + 2*s2) over the maps' singular values (inverse of sigma_factor_ifs)."""
    linear = np.asarray(maps, dtype=np.float64)[:, :4].reshape(-1, 2, 2)
    singular = np.linalg.svd(linear, compute_uv=False)
    return float((singular[:, 0] + 2 * singular[:, 1]).sum())

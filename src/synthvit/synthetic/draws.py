"""Seeded draws: what each kind draws for (category, attempt) or (category, instance).

Each draw builds its own generator from (seed, stream, category, attempt), so it is a
pure function of its key: workers can run them in any order and the dataset comes out
the same. The draw objects are small frozen dataclasses so they pickle to workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthvit.synthetic import ifs
from synthvit.synthetic.search import Candidate

# One stream per kind of draw, so no two draws ever share a generator.
SEARCH_STREAM, INSTANCE_STREAM, SIGMA_FACTOR_STREAM, PERTURBATION_STREAM = range(4)
# FractalDB instance fluctuation: one coefficient (a..f) of every map times one of these
# (its 25 weight rows: identity + 6 coefficients x 4 weights), then one of 4 flips.
INSTANCE_WEIGHTS = (0.8, 0.9, 1.1, 1.2)
FLIPS = ("none", "vertical", "horizontal", "both")


def keyed_rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _render_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**63))


def _candidate(maps: np.ndarray, rng: np.random.Generator, **extra) -> Candidate:
    return Candidate(maps, ifs.map_probabilities(maps), _render_seed(rng), extra)


@dataclass(frozen=True)
class SearchDraw:
    """FractalDB/OFDB category search: min..max maps, coefficients U(-1, 1)."""

    seed: int
    min_maps: int
    max_maps: int

    def __call__(self, category: int, attempt: int) -> Candidate:
        rng = keyed_rng(self.seed, SEARCH_STREAM, category, attempt)
        return _candidate(ifs.random_ifs(rng, self.min_maps, self.max_maps), rng)


@dataclass(frozen=True)
class SigmaFactorDraw:
    """1p-frac's single IFS: num_maps maps with sigma-factor sigma (category is ignored)."""

    seed: int
    num_maps: int
    sigma: float

    def __call__(self, category: int, attempt: int) -> Candidate:
        rng = keyed_rng(self.seed, SIGMA_FACTOR_STREAM, attempt)
        return _candidate(ifs.sigma_factor_ifs(rng, self.num_maps, self.sigma), rng)


@dataclass(frozen=True)
class PerturbationDraw:
    """1p-frac categories: the base IFS with every coefficient times U(1-delta, 1+delta)."""

    seed: int
    base_maps: tuple  # rows of 6 floats (a tuple so the draw stays hashable and frozen)
    delta: float

    def __call__(self, category: int, attempt: int) -> Candidate:
        rng = keyed_rng(self.seed, PERTURBATION_STREAM, category, attempt)
        maps, multipliers = ifs.perturb(np.array(self.base_maps), rng, self.delta)
        return _candidate(maps, rng, multipliers=multipliers.tolist())


def instance_variation(seed: int, category: int, instance: int) -> dict:
    """FractalDB instance >= 1: a weight row (one coefficient scaled, or none), a flip,
    and its own render seed, which also gives it its own random patch masks."""
    rng = keyed_rng(seed, INSTANCE_STREAM, category, instance)
    row = int(rng.integers(1 + len(ifs.COEFFICIENT_NAMES) * len(INSTANCE_WEIGHTS)))
    slot, weight = divmod(row - 1, len(INSTANCE_WEIGHTS))
    return {
        "coefficient": None if row == 0 else ifs.COEFFICIENT_NAMES[slot],
        "weight": 1.0 if row == 0 else INSTANCE_WEIGHTS[weight],
        "flip": FLIPS[int(rng.integers(len(FLIPS)))],
        "render_seed": _render_seed(rng),
    }


def instance_maps(category_maps, variation: dict) -> np.ndarray:
    maps = np.asarray(category_maps, dtype=np.float64)
    if variation["coefficient"] is None:
        return maps
    return ifs.scale_coefficient(maps, ifs.COEFFICIENT_NAMES.index(variation["coefficient"]), variation["weight"])


def flip(image: np.ndarray, how: str) -> np.ndarray:
    if how in ("vertical", "both"):
        image = image[::-1]
    if how in ("horizontal", "both"):
        image = image[:, ::-1]
    return np.ascontiguousarray(image)

"""Seeded draws: what each kind draws for (category, attempt) or (category, instance).

Each draw builds its own generator from (seed, stream, category, attempt), so it is a
pure function of its key: workers can run them in any order and the dataset comes out
the same. The search gets a draw as functools.partial(search_draw, seed, ...): it pickles
to workers.
"""

from __future__ import annotations

import numpy as np

from synthvit.synthetic import ifs
from synthvit.synthetic.search import Candidate

# One stream per kind of draw, so no two draws ever share a generator.
SEARCH_STREAM, INSTANCE_STREAM, SIGMA_FACTOR_STREAM, PERTURBATION_STREAM, HELDOUT_STREAM = range(5)
FLIPS = ("none", "vertical", "horizontal", "both")
OFDB_FIRST_ROW = (0.2, 1.0, 1.0, 1.0, 1.0, 1.0)  # make_2dofdb.py renders weights_0.4.csv's first row only
SIGMA_JITTER = 0.1  # 1p-frac draws its base IFS's sigma-factor from U(sigma - 0.1, sigma + 0.1)


def weight_rows(step: float) -> list[tuple[str | None, float]]:
    """FractalDB's weights_<step>.csv as (coefficient, weight) rows, identity first:
    each of a..f times 1-2*step, 1-step, 1+step, 1+2*step (25 rows; the file lists the
    same rows with the identity among a's)."""
    weights = (1 - 2 * step, 1 - step, 1 + step, 1 + 2 * step)
    return [(None, 1.0)] + [(name, round(w, 6)) for name in ifs.COEFFICIENT_NAMES for w in weights]


def keyed_rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _render_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**63))


def _candidate(maps: np.ndarray, rng: np.random.Generator, **extra) -> Candidate:
    return Candidate(maps, ifs.map_probabilities(maps), _render_seed(rng), extra)


def search_draw(seed: int, min_maps: int, max_maps: int, render_weights, category: int, attempt: int) -> Candidate:
    """FractalDB/OFDB category search: min..max maps, coefficients U(-1, 1).

    render_weights (or None) multiply every map's (a..f) in the dataset image only (OFDB's
    first weight row); the search scores the drawn maps, as the official code does."""
    rng = keyed_rng(seed, SEARCH_STREAM, category, attempt)
    candidate = _candidate(ifs.random_ifs(rng, min_maps, max_maps), rng)
    if render_weights is not None:
        candidate.render_maps = candidate.maps * np.asarray(render_weights)
    return candidate


def sigma_factor_draw(seed: int, num_maps: int, sigma: float, category: int, attempt: int) -> Candidate:
    """1p-frac's single IFS: num_maps maps, sigma-factor U(sigma - 0.1, sigma + 0.1) (category is ignored)."""
    rng = keyed_rng(seed, SIGMA_FACTOR_STREAM, attempt)
    low, high = max(1e-6, sigma - SIGMA_JITTER), min(3.0 * num_maps, sigma + SIGMA_JITTER)
    return _candidate(ifs.sigma_factor_ifs(rng, num_maps, rng.uniform(low, high)), rng)


def perturbation_draw(seed: int, base_maps, delta: float, category: int, attempt: int) -> Candidate:
    """1p-frac categories: the base IFS (rows of 6 floats) with every coefficient times U(1-delta, 1+delta)."""
    rng = keyed_rng(seed, PERTURBATION_STREAM, category, attempt)
    multipliers = rng.uniform(1.0 - delta, 1.0 + delta, size=np.shape(base_maps))
    return _candidate(np.asarray(base_maps) * multipliers, rng, multipliers=multipliers.tolist())


def instance_variation(seed: int, category: int, instance: int, weight_step: float) -> dict:
    """FractalDB instance `instance`, enumerated as the official 25 weight rows x 10 patch
    draws x 4 flips, flips fastest, then rows, then patch draws: any first 100 instances
    cover every row and flip once; 1,000 are the official set. Instance 0 (identity, no
    flip) is the searched image; each instance has its own render seed (patch masks)."""
    rows = weight_rows(weight_step)
    coefficient, weight = rows[(instance // len(FLIPS)) % len(rows)]
    return {
        "coefficient": coefficient,
        "weight": weight,
        "flip": FLIPS[instance % len(FLIPS)],
        "pattern": instance // (len(FLIPS) * len(rows)),
        "render_seed": instance_render_seed(seed, category, instance),
    }


def heldout_variation(seed: int, category: int, instance: int, weight_step: float) -> dict:
    """A FractalDB instance no training epoch draws: one coefficient scaled by a weight drawn from the
    whole range of the weight set, U(1 - 2 step, 1 + 2 step), where training uses its four values only;
    a random flip; its own render seed."""
    rng = keyed_rng(seed, HELDOUT_STREAM, category, instance)
    return {
        "coefficient": ifs.COEFFICIENT_NAMES[int(rng.integers(len(ifs.COEFFICIENT_NAMES)))],
        "weight": float(rng.uniform(1 - 2 * weight_step, 1 + 2 * weight_step)),
        "flip": FLIPS[int(rng.integers(len(FLIPS)))],
        "render_seed": instance_render_seed(seed, category, instance),
    }


def instance_render_seed(seed: int, category: int, instance: int) -> int:
    """Render seed (patch masks, map table) of instance `instance` of `category`, any number."""
    return _render_seed(keyed_rng(seed, INSTANCE_STREAM, category, instance))


def instance_maps(category_maps, variation: dict) -> np.ndarray:
    """The category's maps with the variation's coefficient scaled (probabilities stay the
    category's, as in FractalDB's renderer)."""
    maps = np.array(category_maps, dtype=np.float64)
    if variation["coefficient"] is not None:
        maps[:, ifs.COEFFICIENT_NAMES.index(variation["coefficient"])] *= variation["weight"]
    return maps


def mirrors(how: str) -> tuple[bool, bool]:
    """(reverse the rows, reverse the columns) of flip `how` (one of FLIPS)."""
    return how in ("vertical", "both"), how in ("horizontal", "both")


def flip(image: np.ndarray, how: str) -> np.ndarray:
    rows, columns = mirrors(how)
    return np.ascontiguousarray(image[:: -1 if rows else 1, :: -1 if columns else 1])

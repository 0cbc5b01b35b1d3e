"""Bounded search: for each category, the first IFS draw whose image reaches the fill rate.

`draw(category, attempt)` must be a pure function of its arguments (it seeds its own
generator from them) and picklable (it runs in worker processes), so a category's
result is its first passing attempt whatever the batch sizes, worker count or
machine. Candidates are rendered in rounds of tasks on a
worker pool, most categories one attempt per round; the first category gets whole
rounds until it passes and a category that keeps failing gets more attempts per round,
so an impossible request runs out of attempts quickly instead of one attempt a round.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from synthvit.synthetic.png import encode_gray_png
from synthvit.synthetic.render import fill_rates, render_batch

# Quarter-size preview (same points per pixel) before the full render: it turns away
# the many hopeless draws at a fraction of the cost and never accepts one on its own.
# Measured on 3,000 search draws at 362 px / 200k points: preview fill >= 0.99x the full
# fill for every draw with full fill >= 0.1 (>= 1.02x at 0.2), so a margin of 0.8 lost
# no passing draw and sent 30% of the draws on to the full render.
PREVIEW_MIN_SIZE = 128
PREVIEW_SHRINK = 4
PREVIEW_MARGIN = 0.8
POINTS_PER_BATCH = 1_000_000  # points rendered in one numpy batch (~8 bytes per point)
# A round is at least 16 batches of draws, split into at least two tasks per worker; a
# task previews its draws in one batch, then fully renders the survivors. Round and
# task sizes change only the wasted work, never the result.
BATCHES_PER_ROUND = 16
TASKS_PER_WORKER = 2


@dataclass
class Candidate:
    maps: np.ndarray  # (K, 6)
    probabilities: np.ndarray  # (K,)
    render_seed: int
    extra: dict = field(default_factory=dict)  # manifest fields the caller wants kept


@dataclass
class Accepted:
    candidate: Candidate
    attempts: int  # draws used, the accepted one included
    png: bytes  # the rendered image, PNG-encoded by the worker
    fill_rate: float


class SearchFailed(Exception):
    def __init__(self, category: int, attempts: int, best_fill_rate: float):
        self.category, self.attempts, self.best_fill_rate = category, attempts, best_fill_rate
        super().__init__(f"category {category}: no draw passed in {attempts} attempts (best fill rate {best_fill_rate:.3f})")


def batch_size_for(num_points: int) -> int:
    return int(np.clip(POINTS_PER_BATCH // num_points, 1, 64))


def _evaluate(jobs, *, draw, image_size: int, num_points: int, fill_rate: float, batch: int, patch: str = "random"):
    """[(candidate, fill rate, PNG bytes or None)] per (category, attempt); PNG when it passes."""
    candidates = [draw(category, attempt) for category, attempt in jobs]
    systems = [(c.maps, c.probabilities) for c in candidates]
    seeds = [c.render_seed for c in candidates]
    rates = np.zeros(len(jobs))
    hopeful = list(range(len(jobs)))
    if image_size >= PREVIEW_MIN_SIZE and fill_rate > 0:
        previews = render_batch(systems, image_size // PREVIEW_SHRINK, max(100, num_points // PREVIEW_SHRINK**2), seeds, patch)
        rates = fill_rates(previews)  # estimates, for the error message of a failed search
        hopeful = [i for i in hopeful if rates[i] >= PREVIEW_MARGIN * fill_rate]
    pngs = [None] * len(jobs)
    for start in range(0, len(hopeful), batch):
        chosen = hopeful[start : start + batch]
        rendered = render_batch([systems[i] for i in chosen], image_size, num_points, [seeds[i] for i in chosen], patch)
        for i, image, rate in zip(chosen, rendered, fill_rates(rendered)):
            rates[i] = rate
            pngs[i] = encode_gray_png(image) if rate >= fill_rate else None
    return [(candidates[i], float(rates[i]), pngs[i]) for i in range(len(jobs))]


def search(
    num_categories: int,
    draw: Callable[[int, int], Candidate],
    image_size: int,
    num_points: int,
    fill_rate: float,
    max_attempts: int,
    pool,
    workers: int,
    on_accept: Callable[[int, Accepted], None],
    patch: str = "random",
) -> list[Accepted]:
    """One Accepted per category, in category order; raises SearchFailed when one runs out.

    A category's result is its first passing attempt: attempts are tried in order and
    every earlier one failed. pool is an executor with `workers` workers (its map is
    used); on_accept(category, accepted) runs here as soon as a category is decided.
    """
    batch = batch_size_for(num_points)
    evaluate = functools.partial(_evaluate, draw=draw, image_size=image_size, num_points=num_points,
                                 fill_rate=fill_rate, batch=batch, patch=patch)
    num_tasks = TASKS_PER_WORKER * max(2, workers)
    round_size = batch * max(BATCHES_PER_ROUND, num_tasks)
    tried = [0] * num_categories
    best = [0.0] * num_categories
    accepted: list[Accepted | None] = [None] * num_categories
    pending = list(range(num_categories))
    while pending:
        # Until something passes, the first pending category gets whole rounds: an
        # impossible request then fails after max_attempts renders, not max_attempts rounds.
        probing = not any(accepted)
        jobs, depths = [], {}
        for category in pending:
            depth = round_size if probing else max(1, tried[category] // 4)
            depths[category] = min(max_attempts - tried[category], depth)
            jobs += [(category, tried[category] + k) for k in range(depths[category])]
            if len(jobs) >= round_size:
                break
        size = -(-len(jobs) // num_tasks)
        tasks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        outcomes = [outcome for task in pool.map(evaluate, tasks) for outcome in task]
        for (category, attempt), (candidate, rate, png) in zip(jobs, outcomes):
            best[category] = max(best[category], rate)
            if png is not None and accepted[category] is None:  # jobs are in attempt order
                accepted[category] = Accepted(candidate, attempt + 1, png, rate)
                on_accept(category, accepted[category])
        for category, depth in depths.items():
            if accepted[category] is None:
                tried[category] += depth
                if tried[category] >= max_attempts:
                    raise SearchFailed(category, tried[category], best[category])
        pending = [c for c in pending if accepted[c] is None]
    return accepted

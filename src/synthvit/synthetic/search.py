"""Bounded search: for each category, the first IFS draw that the acceptance rule keeps.

The rule is the official one, scored on the official cheap render whatever size the
dataset is drawn at: FractalDB/OFDB (ifs_search.py) light one pixel per chaos-game point
at 512 x 512 with 100k points and a 6-px pad and keep fill >= 0.2; 1p-frac
(render_from_oneparam_mp.py) pastes 3x3 random-mask patches at the same size and keeps
fill > 0.05. Here the points are the attractor's (render.py's burn-in), and a system whose
walk does not converge (divergent or too slowly contracting) is never kept.

`draw(category, attempt)` must be a pure function of its arguments (it seeds its own
generator from them) and picklable (it runs in worker processes), so a category's
result is its first passing attempt whatever the batch sizes, worker count or
machine. Candidates are scored in rounds of tasks on a worker pool, most categories
one attempt per round; the first category gets whole rounds until it passes and a
category that keeps failing gets more attempts per round, so an impossible request
runs out of attempts quickly instead of one attempt a round.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from synthvit.errors import ConfigError
from synthvit.synthetic.render import fill_rates, point_fill_rates, render_batch

SCORE_SIZE, SCORE_POINTS, SCORE_PAD = 512, 100_000, 6  # the official search render
# Draws scored per numpy batch: the burn-in pre-run is call-bound, so larger batches share it
# (measured: 20 a batch ~1.5x faster than 10, 40 no faster).
SCORE_BATCH = 20
# A round is at least 16 batches of draws, split into at least two tasks per worker.
# Round and task sizes change only the wasted work, never the result.
BATCHES_PER_ROUND = 16
TASKS_PER_WORKER = 2


@dataclass(frozen=True)
class Rule:
    """How a draw is scored: fill of the official 512-px render, kept above `threshold`."""

    threshold: float
    patched: bool = False  # False: 1 px per point (FractalDB/OFDB); True: 3x3 random-mask patches (1p-frac)
    strict: bool = False  # 1p-frac keeps fill > threshold, FractalDB fill >= threshold

    def score(self, systems, seeds) -> tuple[np.ndarray, np.ndarray]:
        """(fill rates, converged) of the systems' official search renders."""
        if not self.patched:
            return point_fill_rates(systems, seeds, SCORE_SIZE, SCORE_POINTS, SCORE_PAD)
        images, converged = render_batch(
            systems, SCORE_SIZE, SCORE_POINTS, seeds, "random", SCORE_PAD, with_convergence=True
        )
        return fill_rates(images), converged

    def keeps(self, rate: float, converged: bool) -> bool:
        return bool(converged) and (rate > self.threshold if self.strict else rate >= self.threshold)


@dataclass
class Candidate:
    maps: np.ndarray  # (K, 6): what the rule scores
    probabilities: np.ndarray  # (K,)
    render_seed: int
    extra: dict = field(default_factory=dict)  # manifest fields the caller wants kept
    render_maps: np.ndarray | None = None  # what the dataset image draws, when not `maps` (OFDB's first weight row)


@dataclass
class Accepted:
    candidate: Candidate
    attempts: int  # draws used, the accepted one included
    fill_rate: float


def _evaluate(jobs, *, draw, rule: Rule):
    """[(candidate, fill rate, kept by the rule)] per (category, attempt)."""
    candidates = [draw(category, attempt) for category, attempt in jobs]
    outcomes = []
    for start in range(0, len(jobs), SCORE_BATCH):
        chunk = candidates[start : start + SCORE_BATCH]
        rates, converged = rule.score([(c.maps, c.probabilities) for c in chunk], [c.render_seed for c in chunk])
        outcomes += [(c, float(rate), rule.keeps(rate, ok)) for c, rate, ok in zip(chunk, rates, converged)]
    return outcomes


def search(
    num_categories: int,
    draw: Callable[[int, int], Candidate],
    rule: Rule,
    max_attempts: int,
    pool,
    workers: int,
    failure: str,
    on_accept: Callable[[int, Accepted], None] = lambda *_: None,
) -> list[Accepted]:
    """One Accepted per category, in category order.

    A category's result is its first passing attempt: attempts are tried in order and
    every earlier one failed. pool is an executor with `workers` workers (its map is
    used); on_accept(category, accepted) runs here as soon as a category is decided.
    A category that runs out of attempts raises a ConfigError naming the threshold to
    lower: `failure`, formatted with the category and its best fill rate, says what failed.
    """
    evaluate = functools.partial(_evaluate, draw=draw, rule=rule)
    num_tasks = TASKS_PER_WORKER * max(2, workers)
    round_size = SCORE_BATCH * max(BATCHES_PER_ROUND, num_tasks)
    tried = [0] * num_categories
    best = [0.0] * num_categories
    accepted: list[Accepted | None] = [None] * num_categories
    pending = list(range(num_categories))
    while pending:
        # Until something passes, the first pending category gets whole rounds: an
        # impossible request then fails after max_attempts renders, not max_attempts rounds.
        probing = not any(accepted)
        jobs, depths = [], {}
        # Later, a category tries about as many draws a round as a category has needed so far.
        done = [a.attempts for a in accepted if a is not None]
        needed = sum(done) // max(1, len(done))
        for category in pending:
            depth = round_size if probing else max(1, needed, tried[category] // 4)
            depths[category] = min(max_attempts - tried[category], depth)
            jobs += [(category, tried[category] + k) for k in range(depths[category])]
            if len(jobs) >= round_size:
                break
        size = -(-len(jobs) // num_tasks)
        tasks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        outcomes = [outcome for task in pool.map(evaluate, tasks) for outcome in task]
        for (category, attempt), (candidate, rate, kept) in zip(jobs, outcomes):
            best[category] = max(best[category], rate)
            if kept and accepted[category] is None:  # jobs are in attempt order
                accepted[category] = Accepted(candidate, attempt + 1, rate)
                on_accept(category, accepted[category])
        for category, depth in depths.items():
            if accepted[category] is None:
                tried[category] += depth
                if tried[category] >= max_attempts:
                    key = "synthetic.onepfrac_fill_rate" if rule.patched else "synthetic.fill_rate"
                    raise ConfigError(
                        key,
                        rule.threshold,
                        failure.format(category=category, best=best[category])
                        + f" within synthetic.max_attempts={max_attempts} draws; lower {key}"
                        " or raise synthetic.max_attempts",
                    )
        pending = [c for c in pending if accepted[c] is None]
    return accepted

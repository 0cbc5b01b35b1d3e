"""The renderer's compiled loops (numba, synthetic/kernels.py) against its numpy code: the
same bytes, converged flags, points and fill rates, on systems that converge, diverge,
overflow and span 1e37 (the cases numpy handles apart)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from helpers.fractals import SEEDS, SYSTEMS, search_draws
from synthvit.synthetic import kernels
from synthvit.synthetic.render import RenderSettings, chaos_game_points, point_fill_rates, render_batch
from synthvit.synthetic.search import SCORE_PAD, SCORE_POINTS, SCORE_SIZE


def numpy_and_compiled(monkeypatch, fn):
    """(fn() on render.py's numpy code, fn() on the compiled kernels)."""
    monkeypatch.setattr(kernels, "ENABLED", False)
    expected = fn()
    monkeypatch.setattr(kernels, "ENABLED", True)
    return expected, fn()


@pytest.mark.skipif(os.environ.get("SYNTHVIT_NUMBA") == "0", reason="SYNTHVIT_NUMBA=0: the numpy path asked for")
def test_the_kernels_are_what_the_tests_and_the_pipeline_run():
    assert kernels.numba is not None and kernels.ENABLED  # numba is pinned in requirements.txt


@pytest.mark.parametrize(
    "settings",
    [
        RenderSettings(32, 2000),  # random masks, 64 walkers
        RenderSettings(64, 10_000, "full"),  # the demo's preset
        RenderSettings(48, 20_000, "random", pad=6, value=127),  # FractalDB's pad and gray, 625 walkers
        RenderSettings(40, 50_000, "full", pad=2),  # several starting points per pre-run walker
    ],
)
def test_compiled_renderer_gives_numpys_bytes_and_converged_flags(monkeypatch, settings):
    (expected, converged), (images, flags) = numpy_and_compiled(monkeypatch, lambda: settings.render(SYSTEMS, SEEDS))
    assert converged.tolist() == [True, True, True, False, False, False, True]  # the cases are what they say
    assert flags.tolist() == converged.tolist()
    assert images.dtype == np.uint8 and np.array_equal(images, expected)
    other, _ = settings.render(SYSTEMS, [seed + 1 for seed in SEEDS])
    assert not np.array_equal(other, expected)  # the seeds matter: the comparison can fail


def test_compiled_renderer_matches_on_search_draws_at_fractaldb_size(monkeypatch):
    systems, seeds = search_draws(24), list(range(200, 224))  # U(-1, 1) coefficients: some diverge
    expected, images = numpy_and_compiled(
        monkeypatch, lambda: render_batch(systems, 96, 200_000, seeds, "random", 6, 127, with_convergence=True)
    )
    assert 0 < expected[1].sum() < len(systems)
    assert np.array_equal(images[1], expected[1]) and np.array_equal(images[0], expected[0])


def test_compiled_search_scores_equal_numpys(monkeypatch):
    systems, seeds = search_draws(16), list(range(16))
    (expected, converged), (rates, flags) = numpy_and_compiled(
        monkeypatch, lambda: point_fill_rates(systems, seeds, SCORE_SIZE, SCORE_POINTS, SCORE_PAD)
    )
    assert np.array_equal(flags, converged) and rates.tolist() == expected.tolist()  # exact, not approximate
    assert len(set(rates.tolist())) > 8


def test_compiled_points_equal_numpys(monkeypatch):
    maps, probabilities = SYSTEMS[2]  # slowly contracting: a long burn-in
    (expected, converged), (points, flag) = numpy_and_compiled(
        monkeypatch, lambda: chaos_game_points(maps, probabilities, 30_000, seed=5)
    )
    assert converged and flag and points.dtype == np.float32
    assert np.array_equal(points, expected)


def test_synthvit_numba_0_turns_the_kernels_off():
    code = "from synthvit.synthetic import kernels; print(kernels.ENABLED)"
    for value, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, "SYNTHVIT_NUMBA": value}
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert result.stdout.strip() == expected

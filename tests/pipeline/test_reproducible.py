"""Same params, same seed, same machine: byte-identical outputs, so a re-run stage changes nothing downstream.

Only the timing files (metrics/timing/, which no stage depends on) may differ between two runs.
"""

from __future__ import annotations

import hashlib

import pytest

from helpers.repo import copy_repo, dvc, stages_run

pytestmark = pytest.mark.e2e

RESULTS = ["models/pretrain.pt", "plots/pretrain/history.csv", "metrics/pretrain.json", "data/synthetic/manifest.json"]


def digests(repo) -> dict[str, str]:
    return {path: hashlib.sha256((repo / path).read_bytes()).hexdigest() for path in RESULTS}


def test_a_stage_run_twice_writes_the_same_bytes(tiny_pipeline, tmp_path):
    """The suite's tiny pipeline, its first two stages forced to run again in a copy."""
    built = tiny_pipeline["repo"]
    repo = copy_repo(built, tmp_path / "repo")
    assert stages_run(dvc(repo, "repro", "-f", "pretrain")) == ["generate_synthetic", "pretrain"]
    assert digests(repo) == digests(built)
    timing = (built / "metrics/timing/pretrain.json").read_text()
    assert (repo / "metrics/timing/pretrain.json").read_text() != timing  # the wall time went here instead
    # Nothing downstream sees a change: DVC reports the pipeline up to pretrain as it was.
    assert "Data and pipelines are up to date" in dvc(repo, "status", "pretrain")

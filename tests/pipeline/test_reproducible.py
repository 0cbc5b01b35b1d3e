"""Same params, same seed, same machine: byte-identical outputs, so a re-run stage changes nothing downstream.

Only the timing files (metrics/timing/, which no stage depends on) may differ between two runs.
"""

from __future__ import annotations

import hashlib

import pytest

from helpers.repo import dvc, stages_run, update_params

pytestmark = pytest.mark.e2e

TINY = {
    "synthetic": {"num_classes": 4, "instances_per_class": 3, "image_size": 32, "num_points": 2000},
    "model": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8},
    "pretrain": {"epochs": 2, "batch_size": 4, "warmup_epochs": 0},
}
RESULTS = ["models/pretrain.pt", "plots/pretrain/history.csv", "metrics/pretrain.json", "data/synthetic/manifest.json"]


def digests(repo) -> dict[str, str]:
    return {path: hashlib.sha256((repo / path).read_bytes()).hexdigest() for path in RESULTS}


def test_a_stage_run_twice_writes_the_same_bytes(repo_copy, small_imagefolder):
    update_params(repo_copy, {**TINY, "data": {"name": "imagefolder", "root": str(small_imagefolder)}})
    assert stages_run(dvc(repo_copy, "repro", "pretrain")) == ["generate_synthetic", "pretrain"]
    first = digests(repo_copy)
    timing = (repo_copy / "metrics/timing/pretrain.json").read_text()
    assert stages_run(dvc(repo_copy, "repro", "-f", "pretrain")) == ["generate_synthetic", "pretrain"]
    assert digests(repo_copy) == first
    assert (repo_copy / "metrics/timing/pretrain.json").read_text() != timing  # the wall time went here instead
    # Nothing downstream sees a change: DVC reports the pipeline up to pretrain as it was.
    assert "Data and pipelines are up to date" in dvc(repo_copy, "status", "pretrain")

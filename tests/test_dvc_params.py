"""Real DVC: bookkeeping params re-run nothing; a fine-tuning param re-runs what depends on it only."""

from __future__ import annotations

import pytest

from conftest import copy_subset
from test_pipeline_e2e import STAGES, TINY, dvc, stages_run

pytestmark = pytest.mark.e2e


def exp_run(repo, *overrides: str) -> list[str]:
    return stages_run(dvc(repo, "exp", "run", *[arg for o in overrides for arg in ("-S", o)]))


def test_bookkeeping_params_rerun_nothing_and_finetune_lr_reruns_its_descendants(repo_copy, cifar10_root, tmp_path):
    data = copy_subset(cifar10_root, tmp_path / "cifar", train_per_class=20, test_per_class=5)
    base = [*TINY, "finetune.epochs=2", "data.name=imagefolder", f"data.root={data}"]
    # A launcher other than plain `python` is exec'd by synthvit.launch (python3 is the same interpreter).
    assert exp_run(repo_copy, *base, "runtime.launcher=python3") == STAGES
    bookkeeping = ["tracking.experiment_name=renamed", "data.num_workers=1", "runtime.launcher=python",
                   "runtime.num_threads=1", "runtime.compile=true", "tracking.model_alias=other",
                   "tracking.log_model=false", "data.download=false"]
    assert exp_run(repo_copy, *base, *bookkeeping) == []
    assert "Data and pipelines are up to date" in dvc(repo_copy, "status")
    # Back to the defaults (no re-run either), with one fine-tuning param changed.
    assert exp_run(repo_copy, *base, "finetune.lr=1e-3") == ["finetune", "evaluate", "visualize"]

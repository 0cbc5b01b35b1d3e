"""Reproduce from cache: what one clone ran and pushed, a fresh clone restores without running a stage.

Two clones of one bare git remote share a local-directory DVC remote, as a team shares S3 or
SSH storage. Clone A ran the tiny pipeline as a named experiment (the suite builds it once:
tests/conftest.py `tiny_pipeline`) and pushes its outputs, its run cache and the experiment;
fresh clones then restore instead of re-training.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from helpers.repo import COMPUTED_OUTPUTS, STAGES, copy_repo, dvc, git, pipeline_env, stages_run

pytestmark = pytest.mark.e2e

# Restored from the cache, the figures are the same bytes too.
OUTPUTS = [
    *COMPUTED_OUTPUTS,
    "plots/evaluate/reliability.png",
    "plots/visualize/confusion_matrix.png",
    "plots/visualize/attention_rollout.png",
]


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("-S", o)]


def digests(repo: Path) -> dict:
    return {path: hashlib.sha256((repo / path).read_bytes()).hexdigest() for path in OUTPUTS}


def restored_stages(output: str) -> list[str]:
    return [s for s in STAGES if f"Stage '{s}' is cached - skipping run, checking out outputs" in output]


def run(repo: Path, *command: str) -> str:
    result = subprocess.run(
        list(command), cwd=repo, env=pipeline_env(repo), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-4000:]}"
    return result.stdout + result.stderr


def fresh_clone(shared: dict, name: str) -> Path:
    dest = shared["root"] / name
    git("clone", "-q", "-b", "main", str(shared["origin"]), str(dest), cwd=shared["root"])
    return dest


@pytest.fixture(scope="module")
def shared(tiny_pipeline, tmp_path_factory) -> dict:
    """Clone A (the suite's tiny pipeline, run as experiment `tiny`) pushed everything."""
    root = tmp_path_factory.mktemp("team")
    origin = root / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(origin), cwd=root)
    a = copy_repo(tiny_pipeline["repo"], root / "a")
    git("remote", "add", "origin", str(origin), cwd=a)
    run(a, "git", "push", "-q", "origin", "main")
    dvc(a, "push", "--run-cache")
    dvc(a, "exp", "push", "origin", "tiny")
    return {
        "root": root,
        "origin": origin,
        "a": a,
        "overrides": tiny_pipeline["overrides"],
        "data": tiny_pipeline["data"],
    }


def test_a_fresh_clone_restores_every_stage_and_the_shared_experiment(shared):
    a, b = shared["a"], fresh_clone(shared, "b")
    output = dvc(b, "exp", "run", "--pull", "-n", "tiny-again", *sets(shared["overrides"]))
    assert stages_run(output) == [] and restored_stages(output) == STAGES, output
    assert digests(b) == digests(a)  # models, metrics, tables and figures, bit for bit

    # DVC reads the restored metrics and plots; predict classifies with the restored model.
    shown = json.loads(dvc(b, "metrics", "show", "--json"))
    evaluation = json.loads((a / "metrics/evaluate.json").read_text())
    assert shown[""]["data"]["metrics/evaluate.json"]["data"] == evaluation  # the workspace's, at its key
    dvc(b, "plots", "show", "-o", str(b / "dvc_plots"))
    assert (b / "dvc_plots/index.html").is_file()
    image = next((shared["data"] / "test/cat").iterdir())
    predicted = json.loads(run(b, "synthvit", "predict", str(image), "--json").splitlines()[-1])
    evaluated = pd.read_csv(b / "plots/evaluate/predictions.csv").set_index("path").loc[str(image)]
    assert predicted["class"] == evaluated["predicted"]  # the restored model, as evaluate scored it

    # The teammate's experiment, with its metrics, and its outputs by `dvc exp apply`.
    dvc(b, "exp", "pull", "origin", "tiny")
    experiments = {
        rev["name"]: rev["data"]
        for baseline in json.loads(dvc(b, "exp", "show", "--json"))
        for experiment in baseline.get("experiments") or []
        for rev in experiment["revs"]
    }
    assert experiments["tiny"]["metrics"]["metrics/evaluate.json"]["data"]["top1"] == evaluation["top1"]
    for path in ("models/finetune.pt", "metrics/evaluate.json"):
        (b / path).unlink()
    dvc(b, "exp", "apply", "tiny")
    assert digests(b) == digests(a)
    assert "up to date" in dvc(b, "status")

    # MLflow: the restored execution is recorded from the restored outputs, once.
    printed = run(b, "synthvit", "record-restored", "--name", "tiny-again")
    assert "recorded restored execution 'tiny-again'" in printed
    assert "already recorded" in run(b, "synthvit", "record-restored", "--name", "tiny-again")
    client = mlflow.MlflowClient(f"sqlite:///{b / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("synthvit")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`synthvit.restored` = 'true'")
    by_name = {r.info.run_name: r for r in runs}
    parent_name = "pretrained · tiny-again (restored)"
    assert sorted(by_name) == sorted([*STAGES, parent_name])
    assert by_name["evaluate"].data.metrics["top1"] == pytest.approx(evaluation["top1"])
    assert by_name["finetune"].data.params["finetune.epochs"] == "4"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs if r.info.run_name in STAGES} == {
        by_name[parent_name].info.run_id
    }
    # The restored execution's cost is the one its timing files recorded when clone A ran it.
    timing = json.loads((a / "metrics/timing/pretrain.json").read_text())
    assert by_name[parent_name].data.metrics["wall_pretrain_s"] == pytest.approx(timing["wall_seconds"], abs=0.1)
    assert len(client.get_metric_history(by_name["finetune"].info.run_id, "train_loss")) == 4  # per epoch


def test_a_changed_finetune_param_reruns_only_finetune_and_what_follows(shared):
    c = fresh_clone(shared, "c")
    output = dvc(c, "exp", "run", "--pull", *sets([*shared["overrides"], "finetune.lr=1e-3"]))
    assert restored_stages(output) == ["generate_synthetic", "pretrain"], output
    assert stages_run(output) == ["finetune", "evaluate", "visualize"]
    assert (c / "models/pretrain.pt").read_bytes() == (shared["a"] / "models/pretrain.pt").read_bytes()


def test_bookkeeping_params_rerun_nothing_and_finetune_lr_reruns_its_descendants(shared):
    """Runs last: it changes clone A's workspace."""
    a, overrides = shared["a"], shared["overrides"]
    bookkeeping = [
        "tracking.experiment_name=renamed",
        "data.num_workers=1",
        "runtime.launcher=python",
        "runtime.num_threads=1",
        "runtime.compile=true",
        "tracking.model_alias=other",
        "tracking.log_model=false",
        "data.download=false",
    ]
    output = dvc(a, "exp", "run", *sets([*overrides, *bookkeeping]))
    assert stages_run(output) == [] and restored_stages(output) == [], output
    assert "Data and pipelines are up to date" in dvc(a, "status")
    # Back to the defaults (no re-run either), with one fine-tuning param changed.
    assert stages_run(dvc(a, "exp", "run", *sets([*overrides, "finetune.lr=1e-3"]))) == [
        "finetune",
        "evaluate",
        "visualize",
    ]

"""A real `mlflow server` that is down before a stage, or goes away during training.

Down before a stage: every stage stops within seconds with one line, before any work.
Gone during training: the stage finishes and writes its DVC outputs; its tracking calls
wait in the outbox and reach the server when it is back, during the stage or with
`synthvit tracking sync`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers.repo import copy_subset, pipeline_env, update_params
from helpers.servers import MlflowServer

pytestmark = pytest.mark.e2e

STAGES = ["generate_synthetic", "pretrain", "finetune", "evaluate", "visualize"]
EPOCHS = 10
TINY = {
    "model": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8},
    "finetune": {"init": "scratch", "epochs": EPOCHS, "batch_size": 32, "warmup_epochs": 0, "auto_augment": "none"},
}


@pytest.fixture
def server(tmp_path):
    server = MlflowServer(f"sqlite:///{tmp_path}/server.db", tmp_path)
    server.start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture
def repo(repo_copy, cifar10_root, tmp_path):
    data = copy_subset(cifar10_root, tmp_path / "cifar", train_per_class=20, test_per_class=5)
    update_params(repo_copy, {**TINY, "data": {"name": "imagefolder", "root": str(data)}})
    return repo_copy


def start_stage(repo: Path, stage: str, url: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, f"stages/{stage}.py"],
            cwd=repo,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**pipeline_env(repo), "MLFLOW_TRACKING_URI": url},
        )


def wait_for(text: str, log: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert process.poll() is None, f"stage ended before {text!r}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{log.read_text()[-4000:]}"
        time.sleep(0.05)


def finetune_run(url: str):
    from mlflow import MlflowClient

    client = MlflowClient(url, registry_uri=url)
    experiment = client.get_experiment_by_name("synthvit")
    runs = client.search_runs([experiment.experiment_id])
    (finetune,) = [r for r in runs if r.info.run_name == "finetune"]
    (parent,) = [r for r in runs if r.info.run_id == finetune.data.tags["mlflow.parentRunId"]]
    return client, finetune, parent


def assert_all_recorded(repo: Path, url: str) -> None:
    """MLflow holds every epoch of the stage, with the values it wrote for DVC, its artifacts, model and end."""
    client, finetune, parent = finetune_run(url)
    assert finetune.info.status == "FINISHED" and parent.info.status == "FINISHED"
    history = pd.read_csv(repo / "plots/finetune/history.csv")
    logged = client.get_metric_history(finetune.info.run_id, "train_loss")
    assert [m.step for m in logged] == list(range(1, EPOCHS + 1))
    assert [m.value for m in logged] == pytest.approx(history["train_loss"].tolist())
    summary = json.loads((repo / "metrics/finetune.json").read_text())
    assert finetune.data.metrics["final_train_acc"] == pytest.approx(summary["train_acc"])
    assert finetune.data.params["finetune.epochs"] == str(EPOCHS)
    assert [a.path for a in client.list_artifacts(finetune.info.run_id) if a.path == "history.csv"] == ["history.csv"]
    version = client.get_model_version_by_alias("synthvit-vit", "current")
    assert version.run_id == finetune.info.run_id
    assert not list((repo / ".synthvit/outbox").glob("*/calls.jsonl"))


def test_server_down_before_or_during_stages(server, repo, tmp_path):
    # Gone after the first epoch, and not back before the stage ends.
    log = tmp_path / "finetune.log"
    stage = start_stage(repo, "finetune", server.url, log)
    wait_for("finetune epoch 1/", log, stage)
    server.stop(signal.SIGKILL)
    assert stage.wait(timeout=600) == 0, log.read_text()[-4000:]
    output = log.read_text()
    assert f"warning: MLflow tracking server {server.url} stopped answering" in output
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"warning: MLflow tracking server {server.url} is not answering: ")
    assert last.endswith("upload them with `synthvit tracking sync` once it is back")
    assert (repo / "models/finetune.pt").is_file() and (repo / "metrics/finetune.json").is_file()
    (outbox,) = (repo / ".synthvit/outbox").glob("*/calls.jsonl")
    calls = [json.loads(line)["call"] for line in outbox.read_text().splitlines()]
    assert "log_batch" in calls and "log_model" in calls and calls[-1] == "set_terminated"

    # Down before a stage: one line within seconds, before any work, no outputs.
    env = {**pipeline_env(repo), "MLFLOW_TRACKING_URI": server.url}
    outputs = {
        "generate_synthetic": "data/synthetic",
        "pretrain": "models/pretrain.pt",
        "evaluate": "metrics/evaluate.json",
        "visualize": "plots/visualize",
    }
    for name in STAGES:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, f"stages/{name}.py"], cwd=repo, env=env, capture_output=True, text=True, timeout=120
        )
        seconds = time.monotonic() - started
        print(f"{name}: exit {result.returncode} after {seconds:.1f} s: {result.stderr.strip().splitlines()[-1]}")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: MLflow tracking server {server.url} does not answer (connection refused): start the server, "
            "or unset MLFLOW_TRACKING_URI to record in the local SQLite store (mlflow.db)"
        )
        assert seconds < 60  # mostly torch's import on a busy 2-core machine; the check is one request of <= 5 s
        assert name not in outputs or not (repo / outputs[name]).exists()
    assert not (repo / "mlflow.db").exists()

    # Back: `synthvit tracking sync` uploads what waited, in order.
    server.start()
    result = subprocess.run(
        [sys.executable, "-m", "synthvit.commands.cli", "tracking", "sync"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"to {server.url}" in result.stdout
    assert_all_recorded(repo, server.url)


def test_server_back_during_the_stage(server, repo, tmp_path):
    log = tmp_path / "finetune.log"
    stage = start_stage(repo, "finetune", server.url, log)
    wait_for("finetune epoch 1/", log, stage)
    server.stop(signal.SIGKILL)
    wait_for("stopped answering", log, stage)
    # Paused while the server restarts, so it is back before training ends whatever the machine's speed.
    os.kill(stage.pid, signal.SIGSTOP)
    try:
        server.start()
    finally:
        os.kill(stage.pid, signal.SIGCONT)
    assert stage.wait(timeout=600) == 0, log.read_text()[-4000:]
    output = log.read_text()
    assert f"MLflow tracking server {server.url} is back: " in output
    assert "synthvit tracking sync" not in output
    assert_all_recorded(repo, server.url)

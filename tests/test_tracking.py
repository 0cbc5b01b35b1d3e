import subprocess
import sys

import mlflow
import pytest

from synthvit import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A real SQLite MLflow store under a fake repo root."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    mlflow.set_tracking_uri(None)


def test_default_uri_is_sqlite_at_dvc_root(store):
    assert tracking.tracking_uri() == f"sqlite:///{store}/mlflow.db"


def test_env_uri_wins(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_stages_of_one_pipeline_share_a_parent(store, monkeypatch):
    monkeypatch.setattr(tracking, "pipeline_key", lambda: "dvc-42-1")
    for stage in ("pretrain", "finetune"):
        with tracking.stage_run(stage, {"lr": 0.1, "stage": stage}, "unit") as run:
            run.log_metric("acc", 0.5, step=1)
            run.log_metric("acc", 0.7, step=2)
    client = tracking.open_client(tracking.tracking_uri())
    experiment = client.get_experiment_by_name("unit")
    assert experiment.artifact_location == (store / "mlartifacts").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if tracking.PIPELINE_TAG in r.data.tags]
    children = [r for r in runs if r not in parents]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["dvc.exp_name"] == "exp-test"
        assert child.data.tags["dvc.baseline_rev"] == "abc123"
        assert child.data.tags["dvc.stage"] in ("pretrain", "finetune")
        assert child.data.params["lr"] == "0.1"
        history = client.get_metric_history(child.info.run_id, "acc")
        assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.7)]


def test_failed_stage_marks_runs_failed(store, monkeypatch):
    monkeypatch.setattr(tracking, "pipeline_key", lambda: "dvc-43-1")
    with pytest.raises(ValueError):
        with tracking.stage_run("finetune", {}, "unit"):
            raise ValueError("boom")
    client = tracking.open_client(tracking.tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED"]


def test_fresh_store_created_by_parallel_processes(tmp_path):
    """Two processes opening one fresh SQLite store at once both succeed (the lock serialises them)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = (
        "from synthvit import tracking; "
        f"print(tracking.get_experiment_id(tracking.open_client({uri!r}), {uri!r}, 'shared'))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    ids = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(ids) == 1

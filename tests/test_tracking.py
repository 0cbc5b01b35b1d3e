import subprocess
import sys

import mlflow
import pytest

from synthvit import tracking
from synthvit.errors import UserError
from synthvit.runner import run_main


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


def stage_runs(store_uri: str) -> tuple[list, list]:
    client = tracking.open_client(store_uri)
    runs = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    parents = [r for r in runs if tracking.PIPELINE_TAG in r.data.tags]
    return parents, [r for r in runs if r not in parents]


def test_stage_failing_before_its_run_fails_the_parent(store, monkeypatch):
    """A later stage that fails before `stage_run` (e.g. weights it cannot fetch) must not leave the parent FINISHED."""
    monkeypatch.setattr(tracking, "pipeline_key", lambda: "dvc-44-1")
    with tracking.stage_run("pretrain", {}, "unit"):
        pass
    # The next stage is a new process under the same dvc: its run has not opened when it fails.
    monkeypatch.setattr(tracking, "_stage_run_opened", False)
    monkeypatch.setenv("DVC_STAGE", "finetune")

    def finetune():
        raise UserError("cannot download ImageNet weights")

    with pytest.raises(SystemExit) as exit_info:
        run_main(finetune)
    assert exit_info.value.code == 2
    parents, children = stage_runs(tracking.tracking_uri())
    assert [p.info.status for p in parents] == ["FAILED"]
    by_name = {c.info.run_name: c for c in children}
    assert sorted(by_name) == ["finetune", "pretrain"]
    assert by_name["pretrain"].info.status == "FINISHED"
    failed = by_name["finetune"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert failed.data.tags[tracking.ERROR_TAG] == "cannot download ImageNet weights"
    assert failed.data.tags["dvc.exp_name"] == "exp-test" and failed.data.tags["dvc.stage"] == "finetune"


def test_early_failure_records_nothing_outside_dvc_or_twice(store, monkeypatch):
    monkeypatch.setattr(tracking, "pipeline_key", lambda: "dvc-45-1")
    with tracking.stage_run("pretrain", {}, "unit"):
        pass
    monkeypatch.setattr(tracking, "_stage_run_opened", False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    tracking.record_early_failure(UserError("not under dvc"))  # e.g. `python stages/finetune.py` by hand
    monkeypatch.setenv("DVC_STAGE", "finetune")
    with pytest.raises(ValueError):  # failing inside its run: the run records it, the hook adds nothing
        with tracking.stage_run("finetune", {}, "unit"):
            raise ValueError("boom")
    tracking.record_early_failure(ValueError("boom"))
    parents, children = stage_runs(tracking.tracking_uri())
    assert [p.info.status for p in parents] == ["FAILED"]
    assert sorted((c.info.run_name, c.info.status) for c in children) == [("finetune", "FAILED"), ("pretrain", "FINISHED")]

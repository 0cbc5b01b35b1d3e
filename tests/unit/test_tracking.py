import subprocess
import sys

import mlflow
import pytest
import torch

from synthvit.commands.cli import main
from synthvit.config import ModelConfig
from synthvit.errors import UserError, run_main
from synthvit.models import create_model, save_checkpoint
from synthvit.pipeline import stage_context
from synthvit.tracking import outbox, registry, runs
from synthvit.tracking import store as mlflow_store


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
    assert mlflow_store.tracking_uri() == f"sqlite:///{store}/mlflow.db"


def test_env_uri_wins(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_store.tracking_uri() == "http://127.0.0.1:5000"


def test_stages_of_one_pipeline_share_a_parent(store, monkeypatch):
    monkeypatch.setattr(runs, "pipeline_key", lambda: "dvc-42-1")
    for stage in ("pretrain", "finetune"):
        with runs.stage_run(stage, {"lr": 0.1, "stage": stage}, "unit") as run:
            run.log_metric("acc", 0.5, step=1)
            run.log_metric("acc", 0.7, step=2)
    client = mlflow_store.open_client(mlflow_store.tracking_uri())
    experiment = client.get_experiment_by_name("unit")
    assert experiment.artifact_location == (store / "mlartifacts").as_uri()
    found = client.search_runs([experiment.experiment_id])
    parents = [r for r in found if mlflow_store.PIPELINE_TAG in r.data.tags]
    children = [r for r in found if r not in parents]
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
    monkeypatch.setattr(runs, "pipeline_key", lambda: "dvc-43-1")
    with pytest.raises(ValueError), runs.stage_run("finetune", {}, "unit"):
        raise ValueError("boom")
    client = mlflow_store.open_client(mlflow_store.tracking_uri())
    found = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert sorted(r.info.status for r in found) == ["FAILED", "FAILED"]


def test_a_signal_inside_a_c_extension_import_ends_the_runs_killed(store, monkeypatch):
    """SIGTERM that lands while a C extension initialises comes out as an ImportError caused by it
    (errors.interruption): the runs end KILLED, as for any stop the user asked for, with no error recorded."""
    from synthvit.errors import Terminated

    monkeypatch.setattr(runs, "pipeline_key", lambda: "dvc-44-1")
    with pytest.raises(ImportError), runs.stage_run("evaluate", {}, "unit"):
        try:
            raise Terminated()
        except Terminated as signal:
            raise ImportError("initialization failed") from signal
    client = mlflow_store.open_client(mlflow_store.tracking_uri())
    found = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert sorted(r.info.status for r in found) == ["KILLED", "KILLED"]
    assert not any(mlflow_store.ERROR_TAG in r.data.tags for r in found)


def test_fresh_store_created_by_parallel_processes(tmp_path):
    """Three processes opening one fresh SQLite store at the same instant all succeed (the lock serialises them).

    A start gate makes the race happen: each process imports everything first, says it is
    ready, and waits until all are before opening the store."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    gate = tmp_path / "gate"
    gate.mkdir()
    code = (
        "import os, sys, time\n"
        "from synthvit.tracking import store\n"
        f"gate = {str(gate)!r}\n"
        "open(os.path.join(gate, str(os.getpid())), 'w').close()\n"
        "while len(os.listdir(gate)) < 3: time.sleep(0.01)\n"
        "passed = time.time()\n"
        f"print(passed, store.get_experiment_id(store.open_client({uri!r}), {uri!r}, 'shared'))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    lines = [out.strip().splitlines()[-1].split() for out, _ in results]
    assert len({experiment for _, experiment in lines}) == 1
    passed = [float(time) for time, _ in lines]
    assert max(passed) - min(passed) < 0.5  # they went for the fresh store together


def stage_runs(store_uri: str) -> tuple[list, list]:
    client = mlflow_store.open_client(store_uri)
    found = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    parents = [r for r in found if mlflow_store.PIPELINE_TAG in r.data.tags]
    return parents, [r for r in found if r not in parents]


def test_stage_failing_before_its_run_fails_the_parent(store, monkeypatch):
    """A later stage whose params do not validate must not leave the parent FINISHED: its run is recorded FAILED."""
    monkeypatch.setattr(runs, "pipeline_key", lambda: "dvc-44-1")
    with runs.stage_run("pretrain", {}, "unit"):
        pass
    # The next stage, a new process under the same dvc, meets a bad params.yaml before its run opens.
    monkeypatch.setenv("DVC_STAGE", "finetune")
    (store / "params.yaml").write_text("tracking: {experiment_name: unit}\nfinetune: {epochs: 0}\n")

    def finetune():
        with stage_context("finetune", "finetune"):
            raise AssertionError("the stage body must not run")

    with pytest.raises(SystemExit) as exit_info:
        run_main(finetune)
    assert exit_info.value.code == 2
    parents, children = stage_runs(mlflow_store.tracking_uri())
    assert [p.info.status for p in parents] == ["FAILED"]
    by_name = {c.info.run_name: c for c in children}
    assert sorted(by_name) == ["finetune", "pretrain"]
    assert by_name["pretrain"].info.status == "FINISHED"
    failed = by_name["finetune"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert failed.data.tags[mlflow_store.ERROR_TAG] == "params.yaml: finetune.epochs=0 is invalid: an integer >= 1"
    assert failed.data.tags["dvc.exp_name"] == "exp-test" and failed.data.tags["dvc.stage"] == "finetune"


def test_a_stage_failing_in_its_run_records_the_error_once(store, small_imagefolder, monkeypatch):
    monkeypatch.setattr(runs, "pipeline_key", lambda: "dvc-45-1")
    data = f"data: {{name: imagefolder, root: {small_imagefolder}}}\n"  # the pipeline's inputs are there
    (store / "params.yaml").write_text("tracking: {experiment_name: unit}\n" + data)
    runs.record_early_failure("finetune", UserError("not under dvc"))  # e.g. `python stages/finetune.py` by hand
    with stage_context("pretrain", "seed"):
        pass
    monkeypatch.setenv("DVC_STAGE", "finetune")
    with pytest.raises(UserError), stage_context("finetune", "seed"):
        raise UserError("cannot download ImageNet weights")
    parents, children = stage_runs(mlflow_store.tracking_uri())
    assert [p.info.status for p in parents] == ["FAILED"]
    assert sorted((c.info.run_name, c.info.status) for c in children) == [
        ("finetune", "FAILED"),
        ("pretrain", "FINISHED"),
    ]
    failed = next(c for c in children if c.info.run_name == "finetune")
    assert failed.data.tags[mlflow_store.ERROR_TAG] == "cannot download ImageNet weights"
    # Each stage that ended wrote its timing file; the failed one did not.
    assert (store / "metrics/timing/pretrain.json").is_file() and not (store / "metrics/timing/finetune.json").exists()


def test_a_model_kept_in_the_outbox_is_logged_and_registered_by_sync(store, monkeypatch, capsys):
    """What finetune's log_synthvit_model leaves in the outbox while the server is away: `synthvit tracking sync`
    rebuilds the model from the checkpoint kept there and logs it with its signature, registered and described."""
    tiny = ModelConfig(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, drop_path_rate=0.0)
    model, checkpoint = create_model(tiny, 2), store / "finetune.pt"
    save_checkpoint(checkpoint, model, tiny, ["cat", "dog"])
    uri = mlflow_store.tracking_uri()
    client = mlflow_store.open_client(uri)
    run_id = client.create_run(mlflow_store.get_experiment_id(client, uri, "unit")).info.run_id
    away = outbox.OutboxRun(uri, run_id)
    monkeypatch.setattr(away, "send", away.store)  # the server is away: every call waits in the outbox
    about = {"registered_model": "synthvit-vit", "alias": "current", "score": 0.5, "heldout": "val-a"}
    away.log_synthvit_model(
        model, checkpoint, torch.zeros(1, 3, 16, 16).numpy(), arm="mimetic", model_summary=tiny.summary(), **about
    )
    checkpoint.unlink()  # the outbox keeps its own copy
    with pytest.raises(SystemExit) as exit_info:
        main(["tracking", "sync"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    version = client.get_model_version("synthvit-vit", "1")
    assert version.run_id == run_id and version.tags[registry.ARM_TAG] == "mimetic"
    assert version.description == f"finetune.init=mimetic; {tiny.summary()}; held-out top-1 0.5000"
    signature = mlflow.models.get_model_info("models:/synthvit-vit@current").signature
    assert signature.inputs.inputs[0].shape == (-1, 3, 16, 16) and signature.outputs.inputs[0].shape == (-1, 2)

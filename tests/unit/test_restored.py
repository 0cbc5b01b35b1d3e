"""synthvit record-restored refuses, in one line, what it cannot record (the e2e test records a real restore)."""

import pytest

from helpers.commands import run_synthvit
from synthvit.commands import cli


def record(capsys, *args):
    code, _, err = run_synthvit(capsys, "record-restored", *args)
    return code, err


def test_without_dvc_lock_it_says_to_restore_first(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    code, err = record(capsys)
    assert (
        code == 2
        and err == "error: dvc.lock not found: restore the pipeline first (dvc exp run --pull, or dvc repro --pull)\n"
    )
    assert not (tmp_path / "mlflow.db").exists()


def test_missing_outputs_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  pretrain:\n    cmd: x\n    outs:\n    - path: models/pretrain.pt\n      md5: abc\n"
    )
    code, err = record(capsys)
    assert code == 2 and "outputs named in dvc.lock are missing (models/pretrain.pt)" in err
    assert not (tmp_path / "mlflow.db").exists()


def test_the_restored_parent_carries_the_headline_and_the_recorded_wall_time(tmp_path, monkeypatch, capsys):
    """A restored execution is comparable in MLflow's runs table like a live one (real SQLite store)."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("seed: 3\nfinetune:\n  init: scratch\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate.json").write_text('{"top1": 0.625, "top5": 0.9, "ece": 0.05}\n')
    (tmp_path / "metrics/timing").mkdir()
    (tmp_path / "metrics/timing/evaluate.json").write_text('{"wall_seconds": 21.25}\n')  # when it ran
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  evaluate:\n    cmd: x\n    params:\n      params.yaml:\n"
        "        seed: 3\n    outs:\n    - path: metrics/evaluate.json\n      md5: abc\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["record-restored", "--name", "exp-a", "--experiment", "restored-test"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("restored-test")
    [parent] = client.search_runs(
        [experiment.experiment_id], "tags.`synthvit.restored` = 'true' and attributes.run_name LIKE 'scratch%'"
    )
    assert parent.data.metrics["test_top1"] == 0.625 and parent.data.metrics["test_ece"] == 0.05
    assert parent.data.params["seed"] == "3" and parent.data.params["finetune.init"] == "scratch"
    assert parent.info.run_name == "scratch · exp-a (restored)"
    assert {k: v for k, v in parent.data.metrics.items() if k.startswith("wall_")} == {"wall_evaluate_s": 21.2}

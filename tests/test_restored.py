"""synthvit record-restored refuses, in one line, what it cannot record (the e2e test records a real restore)."""

import pytest

from synthvit import cli


def record(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["record-restored", *args])
    return exit_info.value.code, capsys.readouterr().err


def test_without_dvc_lock_it_says_to_restore_first(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    code, err = record(capsys)
    assert code == 2 and err == "error: dvc.lock not found: restore the pipeline first (dvc exp run --pull, or dvc repro --pull)\n"
    assert not (tmp_path / "mlflow.db").exists()


def test_missing_outputs_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  pretrain:\n    cmd: x\n    outs:\n"
                                       "    - path: models/pretrain.pt\n      md5: abc\n")
    code, err = record(capsys)
    assert code == 2 and "outputs named in dvc.lock are missing (models/pretrain.pt)" in err
    assert not (tmp_path / "mlflow.db").exists()

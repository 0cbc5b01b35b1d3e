"""training/stage.py: what pretrain and finetune write after training, in which order, and what a failed write
leaves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from helpers.training import bright_vs_dark
from synthvit.config import ModelConfig, parse_params
from synthvit.errors import UserError
from synthvit.models import create_model, load_checkpoint
from synthvit.pipeline import Stage
from synthvit.runtime import seed_everything
from synthvit.training.engine import train as train_model
from synthvit.training.resume import resume_path, training_fingerprint
from synthvit.training.stage import record_training

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "model": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "drop_path_rate": 0.0},
    "finetune": {
        "epochs": 2,
        "batch_size": 16,
        "warmup_epochs": 0,
        "mixup_alpha": 0,
        "cutmix_alpha": 0,
        "random_erasing": 0,
        "checkpoint_every": 1,
        "auto_augment": "none",
    },
    "runtime": {"device": "cpu"},
}


class Run:
    """Collects what the stage logs (its MLflow run in a pipeline)."""

    def __init__(self):
        self.metrics, self.params, self.artifacts = {}, {}, []

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_metric(self, key, value, step=None):
        self.metrics[key] = value

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(str(path))


def train(tmp_path, monkeypatch):
    """(stage, model, data, resume state path) for a finetune stage in a folder with params.yaml and dvc.yaml."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "dvc.yaml", tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    params = parse_params(TINY)
    seed_everything(0)
    model = create_model(ModelConfig(**TINY["model"]), 2)
    data = bright_vs_dark(48)
    state = resume_path("finetune", training_fingerprint(model, data, params.finetune, params, params.seed))
    return Stage("finetune", params, Run(), {}, TINY), model, data, state


def record(stage, model, data, state, edit_params=lambda: None):
    """What the finetune stage does: train (resuming from `state`), then write and log; `edit_params` runs
    between the two, as an editor or a refused `dvc exp run -S` would."""
    params = stage.params
    history = train_model(
        model,
        data,
        params.finetune,
        params.runtime,
        params.seed,
        on_epoch=stage.log_epoch,
        desc="finetune",
        resume_file=state,
        num_workers=params.data.num_workers,
    )
    edit_params()
    return record_training(stage, model, data, history, state)


def test_outputs_hold_results_not_timings_and_the_resume_state_goes_last(tmp_path, monkeypatch):
    stage, model, data, state = train(tmp_path, monkeypatch)
    run = stage.run
    summary = record(stage, model, data, state)
    timing = stage.timing
    assert json.loads((tmp_path / "metrics/finetune.json").read_text()) == summary
    assert summary["epochs"] == 2 and "wall_seconds" not in summary and "train_images_per_s" not in summary
    history = pd.read_csv(tmp_path / "plots/finetune/history.csv")
    assert history["epoch"].tolist() == [1, 2] and "epoch_seconds" not in history
    assert len(timing["epoch_seconds"]) == 2 and timing["train_images_per_s"] > 0
    checkpoint = load_checkpoint(tmp_path / "models/finetune.pt")
    assert checkpoint["recipe"]["finetune"]["epochs"] == 2 and checkpoint["summary"] == summary
    assert not state.exists()  # removed once every output was written
    assert run.metrics["final_train_acc"] == summary["train_acc"]


def test_a_model_that_cannot_be_written_leaves_no_metrics_and_keeps_the_training(tmp_path, monkeypatch):
    stage, model, data, state = train(tmp_path, monkeypatch)
    (tmp_path / "models/finetune.pt").mkdir(parents=True)  # in the way: the checkpoint cannot be written
    with pytest.raises(IsADirectoryError):
        record(stage, model, data, state)
    assert not (tmp_path / "metrics/finetune.json").exists()  # nothing that looks like a finished stage
    assert torch.load(state, weights_only=True)["epoch"] == 2  # the next run writes the outputs, no training


def test_params_changed_under_the_stage_write_nothing_and_keep_the_training(tmp_path, monkeypatch, capfd):
    stage, model, data, state = train(tmp_path, monkeypatch)
    edited = {**TINY, "finetune": {**TINY["finetune"], "lr": 0.003}}  # what a refused `dvc exp run -S` leaves
    with pytest.raises(UserError) as caught:
        record(stage, model, data, state, lambda: (tmp_path / "params.yaml").write_text(yaml.safe_dump(edited)))
    message = str(caught.value)
    assert "finetune.lr was (not set) when it started and is 0.003 now" in message and "\n" not in message
    assert not (tmp_path / "models/finetune.pt").exists() and not (tmp_path / "metrics/finetune.json").exists()
    assert torch.load(state, weights_only=True)["epoch"] == 2  # set back, the re-run only writes
    again, fresh_model, data, same_state = train(tmp_path, monkeypatch)  # params.yaml set back, the same start
    assert same_state == state
    capfd.readouterr()
    summary = record(again, fresh_model, data, same_state)
    assert "resuming after epoch 2" in capfd.readouterr().err and summary["epochs"] == 2  # nothing trained again
    assert (tmp_path / "models/finetune.pt").is_file() and not state.exists()


def test_a_key_dvc_yaml_does_not_declare_may_change(tmp_path, monkeypatch):
    stage, model, data, state = train(tmp_path, monkeypatch)
    edited = {**TINY, "runtime": {"device": "cpu", "num_threads": 1}}  # bookkeeping: not in finetune's params
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(edited))
    summary = record(stage, model, data, state)
    assert (tmp_path / "models/finetune.pt").is_file() and summary["epochs"] == 2

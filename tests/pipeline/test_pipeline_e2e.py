"""The real pipeline through real DVC commands in a real git repo, on real CIFAR-10 images: the tiny pipeline
the suite builds once (tests/conftest.py `tiny_pipeline`), all it wrote. What re-runs when a param changes,
and restoring it from a DVC remote: tests/pipeline/test_restore_from_cache.py."""

from __future__ import annotations

import json
import sqlite3

import mlflow.pytorch
import pytest
import torch
import yaml
from PIL import Image

from helpers.repo import STAGES, copy_repo, dvc, stages_run
from synthvit.models import load_checkpoint, model_from_checkpoint

pytestmark = pytest.mark.e2e

FIGURES = [
    "pretrain_curves",
    "finetune_curves",
    "confusion_matrix",
    "misclassified",
    "synthetic_samples",
    "attention_layers",
    "attention_rollout",
]


def test_pipeline_end_to_end(tiny_pipeline, tmp_path):
    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    assert stages_run(tiny_pipeline["output"]) == STAGES

    # Every declared output exists.
    assert (repo / "data/synthetic/manifest.json").is_file()
    assert not (repo / "data/synthetic/images").exists()  # store=manifest: pre-training rendered its 40 images
    for path in [
        "models/pretrain.pt",
        "models/finetune.pt",
        "plots/pretrain/history.csv",
        "plots/finetune/history.csv",
        "plots/evaluate/predictions.csv",
        "plots/evaluate/per_class.csv",
    ]:
        assert (repo / path).is_file(), path
    for path in [*(f"plots/visualize/{name}.png" for name in FIGURES), "plots/evaluate/reliability.png"]:
        with Image.open(repo / path) as image:  # what each shows: tests/unit/test_plots.py and friends
            assert image.format == "PNG" and image.width >= 300, path

    # Evaluation is on the 200 real test images and well above chance (10%).
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert evaluation["num_images"] == 200
    assert evaluation["top1"] > 0.2, evaluation
    assert evaluation["top5"] > evaluation["top1"]
    assert 0.0 <= evaluation["ece"] <= 1.0
    finetune = json.loads((repo / "metrics/finetune.json").read_text())
    # 20% of train held out per class; the kept epoch is the best on it, and the test set is scored once.
    assert finetune["epochs"] == 4 and finetune["train_images"] == 480
    history = (repo / "plots/finetune/history.csv").read_text().splitlines()
    assert "selected" in history[0] and 1 <= finetune["selected_epoch"] <= 4

    # The experiment and its overrides are visible to DVC.
    shown = {
        rev["name"]: rev["data"]
        for baseline in json.loads(dvc(repo, "exp", "show", "--json"))
        for experiment in baseline.get("experiments") or []
        for rev in experiment["revs"]
    }
    assert shown["tiny"]["params"]["params.yaml"]["data"]["finetune"]["epochs"] == 4
    assert shown["tiny"]["metrics"]["metrics/evaluate.json"]["data"] == evaluation
    assert yaml.safe_load((repo / "params.yaml").read_text())["finetune"]["epochs"] == 4
    metrics = json.loads(dvc(repo, "metrics", "show", "--json"))[""]["data"]
    assert (
        metrics["metrics/evaluate.json"]["data"] == evaluation and metrics["metrics/finetune.json"]["data"] == finetune
    )
    dvc(repo, "plots", "show", "-o", str(tmp_path / "dvc_plots"))
    assert (tmp_path / "dvc_plots/index.html").is_file()

    # MLflow: one finished run per stage, under one parent, tagged with the experiment.
    db = sqlite3.connect(repo / "mlflow.db")
    runs = db.execute("SELECT run_uuid, name, status FROM runs").fetchall()
    tags = {(run, key): value for run, key, value in db.execute("SELECT run_uuid, key, value FROM tags")}
    children = [(run, name, status) for run, name, status in runs if (run, "mlflow.parentRunId") in tags]
    assert sorted(name for _, name, _ in children) == sorted(STAGES)
    assert all(status == "FINISHED" for _, _, status in children)
    parents = {tags[(run, "mlflow.parentRunId")] for run, _, _ in children}
    assert len(parents) == 1
    assert all(tags[(run, "dvc.exp_name")] == "tiny" for run, _, _ in children)
    assert all(len(tags[(run, "mlflow.source.git.commit")]) == 40 for run, _, _ in children)
    metric_keys = {(run, key) for run, key in db.execute("SELECT run_uuid, key FROM latest_metrics")}
    run_of = {name: run for run, name, _ in children}
    assert (run_of["finetune"], "eval_acc") in metric_keys and (run_of["evaluate"], "top1") in metric_keys
    artifacts = repo / "mlartifacts"
    assert len(list(artifacts.rglob("figures/*.png"))) == 5
    assert len(list(artifacts.rglob("attention/*.png"))) == 2
    alias = db.execute("SELECT name, alias, version FROM registered_model_aliases").fetchall()
    assert alias == [("synthvit-vit", "current", 1)]
    # The logged MLflow model is the fine-tuned model: the same outputs as the checkpoint's.
    (mlmodel,) = artifacts.rglob("MLmodel")
    logged = mlflow.pytorch.load_model(str(mlmodel.parent)).eval()
    checkpoint = model_from_checkpoint(load_checkpoint(repo / "models/finetune.pt")).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(logged(x), checkpoint(x), atol=1e-6)

    # Nothing changed: nothing runs.
    assert stages_run(dvc(repo, "repro")) == []

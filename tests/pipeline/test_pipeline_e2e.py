"""The real pipeline through real DVC commands in a real git repo, on real CIFAR-10 images."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers.repo import copy_subset, pipeline_env

pytestmark = pytest.mark.e2e

STAGES = ["generate_synthetic", "pretrain", "finetune", "evaluate", "visualize"]
TINY = [
    "synthetic.num_classes=10",
    "synthetic.instances_per_class=4",
    "synthetic.image_size=32",
    "synthetic.num_points=3000",
    "synthetic.patch=random",
    "model.embed_dim=48",
    "model.depth=2",
    "model.num_heads=3",
    "model.patch_size=4",
    "pretrain.epochs=2",
    "pretrain.batch_size=16",
    "pretrain.warmup_epochs=0",
    "finetune.epochs=4",
    "finetune.batch_size=32",
    "finetune.warmup_epochs=0",
    "finetune.lr=2e-3",
    "finetune.mixup_alpha=0",
    "finetune.cutmix_alpha=0",
    "finetune.random_erasing=0",
    "evaluate.batch_size=64",
    "visualize.num_misclassified=8",
    "visualize.num_synthetic=10",
]
FIGURES = [
    "pretrain_curves",
    "finetune_curves",
    "confusion_matrix",
    "misclassified",
    "synthetic_samples",
    "attention_layers",
    "attention_rollout",
]


def dvc(repo: Path, *args: str, timeout: int = 900) -> str:
    result = subprocess.run(
        ["dvc", *args], cwd=repo, env=pipeline_env(repo), capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{output[-6000:]}"
    return output


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w]+)'", output)


def test_pipeline_end_to_end(repo_copy, cifar10_root, tmp_path):
    repo = repo_copy
    data = copy_subset(cifar10_root, tmp_path / "cifar", train_per_class=60, test_per_class=20)
    overrides = [*TINY, "data.name=imagefolder", f"data.root={data}", "data.val_fraction=0.2"]
    output = dvc(repo, "exp", "run", "-n", "e2e", *[arg for o in overrides for arg in ("-S", o)])
    assert stages_run(output) == STAGES

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
    for name in FIGURES:
        assert (repo / f"plots/visualize/{name}.png").stat().st_size > 5000, name
    assert (repo / "plots/evaluate/reliability.png").stat().st_size > 5000

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
    shown = json.loads(dvc(repo, "exp", "show", "--json"))
    assert "e2e" in json.dumps(shown)
    assert yaml.safe_load((repo / "params.yaml").read_text())["finetune"]["epochs"] == 4
    metrics = dvc(repo, "metrics", "show", "--json")
    assert "top1" in metrics
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
    assert all(tags[(run, "dvc.exp_name")] == "e2e" for run, _, _ in children)
    assert all(len(tags[(run, "mlflow.source.git.commit")]) == 40 for run, _, _ in children)
    metric_keys = {(run, key) for run, key in db.execute("SELECT run_uuid, key FROM latest_metrics")}
    run_of = {name: run for run, name, _ in children}
    assert (run_of["finetune"], "eval_acc") in metric_keys and (run_of["evaluate"], "top1") in metric_keys
    artifacts = repo / "mlartifacts"
    assert len(list(artifacts.rglob("figures/*.png"))) == 5
    assert len(list(artifacts.rglob("attention/*.png"))) == 2
    alias = db.execute("SELECT name, alias, version FROM registered_model_aliases").fetchall()
    assert alias == [("synthvit-vit", "current", 1)]
    assert list(artifacts.rglob("MLmodel")), "the fine-tuned model is logged as an MLflow model"

    # Nothing changed: nothing runs.
    output = dvc(repo, "repro")
    assert stages_run(output) == []

    # One finetune param changed: finetune and what follows run again, nothing before it.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["finetune"]["lr"] = 1e-3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = dvc(repo, "repro")
    assert stages_run(output) == ["finetune", "evaluate", "visualize"]

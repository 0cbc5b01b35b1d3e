"""The parent run's headline (params, test metrics, wall time per stage) and the experiment's UI tags,
through `runs.stage_run` on a real SQLite MLflow store; no pipeline, no model."""

import json

import mlflow
import pytest
import yaml

from synthvit.files import repo_root
from synthvit.tracking import runs, summary
from synthvit.tracking import store as mlflow_store

PARAMS = {"seed": 0, "finetune": {"init": "pretrained", "epochs": 8}, "pretrain": {"crop_scale": [0.6, 1.0]}}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fake repo root with params.yaml, a real SQLite store, one pipeline key."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "arm-a")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runs, "pipeline_key", lambda: "dvc-7-7")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (tmp_path / "metrics").mkdir()
    yield tmp_path
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def stage(name: str, metrics_file: dict | None = None, curve: list[float] = (), wall: float | None = None) -> None:
    with runs.stage_run(name, {}, "unit") as run:
        for epoch, value in enumerate(curve, 1):
            run.log_metric("eval_acc", value, step=epoch)
        if metrics_file is not None:
            (repo_root() / f"metrics/{name}.json").write_text(json.dumps(metrics_file))
        if wall is not None:  # what stage_context writes when a stage ends
            timing = repo_root() / f"metrics/timing/{name}.json"
            timing.parent.mkdir(parents=True, exist_ok=True)
            timing.write_text(json.dumps({"stage": name, "wall_seconds": wall}))


def test_parent_run_carries_params_headline_metrics_and_wall_times(store):
    stage("pretrain", {"train_acc": 0.53, "eval_acc": 0.71}, wall=190.123)
    stage("finetune", {"train_acc": 0.61}, curve=[0.3, 0.45], wall=120.0)
    stage("evaluate", {"top1": 0.04268916, "top5": 0.92, "ece": 0.02, "num_images": 10000}, wall=20.44)
    client = mlflow_store.open_client(mlflow_store.tracking_uri())
    experiment = client.get_experiment_by_name("unit")
    parent = next(r for r in client.search_runs([experiment.experiment_id]) if mlflow_store.PIPELINE_TAG in r.data.tags)
    assert parent.data.params == {
        "seed": "0",
        "finetune.init": "pretrained",
        "finetune.epochs": "8",
        "pretrain.crop_scale": "[0.6, 1.0]",
    }
    metrics = parent.data.metrics
    assert {k: metrics[k] for k in summary.HEADLINE_METRICS} == {
        "pretrain_train_acc": 0.53,
        "pretrain_heldout_acc": 0.71,  # on fractal instances no epoch drew
        "finetune_train_acc": 0.61,
        "test_top1": 0.0427,  # rounded as the runs table shows it
        "test_top5": 0.92,
        "test_ece": 0.02,
    }
    # Wall times from the stages' timing files, the figures DVC keeps with the outputs.
    assert {s: metrics[f"wall_{s}_s"] for s in ("pretrain", "finetune", "evaluate")} == {
        "pretrain": 190.1,
        "finetune": 120.0,
        "evaluate": 20.4,
    }
    assert "num_images" not in metrics and parent.info.status == "FINISHED"
    curve = client.get_metric_history(parent.info.run_id, "finetune_eval_acc")
    assert [(m.step, m.value) for m in curve] == [(1, 0.3), (2, 0.45)]
    # What MLflow's UI opens on: a machine-learning experiment, and the view with the headline columns.
    assert {k: experiment.tags[k] for k in summary.EXPERIMENT_TAGS} == summary.EXPERIMENT_TAGS
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{summary.VIEW_KEY}"])
    assert "metrics.`test_top1`" in view["selectedColumns"]


def test_pretraining_accuracy_follows_the_weights_not_the_folder(store):
    """A pre-trained finetune whose pretrain DVC skipped still reports its accuracy and cost; a scratch one does not."""
    (store / "metrics/pretrain.json").write_text(json.dumps({"train_acc": 0.5}))
    (store / "metrics/timing").mkdir()
    (store / "metrics/timing/pretrain.json").write_text(json.dumps({"wall_seconds": 200.0}))
    stage("finetune", {"train_acc": 0.6}, wall=100.0)
    assert summary.headline_metrics("finetune", {"finetune.init": "pretrained"}) == {
        "pretrain_train_acc": 0.5,
        "wall_pretrain_s": 200.0,
        "finetune_train_acc": 0.6,
        "wall_finetune_s": 100.0,
    }
    assert summary.headline_metrics("finetune", {"finetune.init": "scratch"}) == {
        "finetune_train_acc": 0.6,
        "wall_finetune_s": 100.0,
    }
    client = mlflow_store.open_client(mlflow_store.tracking_uri())
    parent = next(
        r
        for r in client.search_runs([client.get_experiment_by_name("unit").experiment_id])
        if mlflow_store.PIPELINE_TAG in r.data.tags
    )
    assert parent.data.metrics["pretrain_train_acc"] == 0.5 and parent.data.metrics["wall_pretrain_s"] == 200.0
    assert parent.info.run_name == "pretrained · arm-a"  # what differs between arms comes first


def test_an_arm_that_did_not_pre_train_leaves_out_the_pre_training_params(store):
    scratch = {**PARAMS, "finetune": {"init": "scratch", "epochs": 8, "backbone": "models/pretrain.pt"}}
    (store / "params.yaml").write_text(yaml.safe_dump({**scratch, "synthetic": {"kind": "ofdb"}}))
    stage("finetune", {"train_acc": 0.6})
    client = mlflow_store.open_client(mlflow_store.tracking_uri())
    parent = next(
        r
        for r in client.search_runs([client.get_experiment_by_name("unit").experiment_id])
        if mlflow_store.PIPELINE_TAG in r.data.tags
    )
    assert parent.data.params == {"seed": "0", "finetune.init": "scratch", "finetune.epochs": "8"}
    imagenet = {"finetune.init": "imagenet", "finetune.imagenet_weights": "vit.safetensors"}
    assert summary.used_params({**imagenet, "pretrain.lr": "0.1"}) == imagenet
    pretrain_run = {"pretrain.lr": "0.1", "seed": "0"}  # no finetune.init: the pre-training's own run keeps its params
    assert summary.used_params(pretrain_run) == pretrain_run


def test_existing_experiment_gets_the_ui_tags(store):
    client = mlflow_store.open_client(mlflow_store.tracking_uri())
    client.create_experiment("unit")  # as an earlier synthvit made it: no tags
    stage("visualize")
    assert summary.EXPERIMENT_TAGS.items() <= client.get_experiment_by_name("unit").tags.items()


def test_ui_url():
    url = summary.ui_url("http://mlflow.internal:5000/", "3")
    assert url == (
        "http://mlflow.internal:5000/#/experiments/3/runs?workflowType=machine_learning"
        "&viewStateShareKey=synthvit-headline"
    )
    assert summary.ui_url("sqlite:////x/mlflow.db", "1").startswith("http://127.0.0.1:5000/#/experiments/1/")

"""Class names are folder names, strings end to end: `0`..`9`, `007` beside `7`, `None` stay what they are in
predictions.csv, per_class.csv, the confusion matrix, the figures, MLflow and `synthvit predict`, though pandas
would read them back as numbers or missing values."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from helpers.repo import CIFAR10_CLASSES, REPO, copy_subset
from helpers.training import tiny_finetuned_checkpoint
from synthvit.commands.cli import main as cli_main
from synthvit.config import ModelConfig
from synthvit.evaluation import plots
from synthvit.files import read_csv, write_csv

TINY = ModelConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)
FOLDER_SETS = {
    "digits": [str(n) for n in range(10)],  # how Fashion-MNIST and many digit sets ship
    "lookalikes": ["007", "7", "None"],  # one number two ways, and what pandas reads as a missing value
}


def load_stage(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_stage", REPO / f"stages/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_read_csv_keeps_names_as_written(tmp_path):
    table = pd.DataFrame({"class": ["007", "7", "None", "NA", "1e3"], "f1": [0.5, 0.25, np.nan, 1.0, 0.0]})
    write_csv(tmp_path / "per_class.csv", table)
    back = read_csv(tmp_path / "per_class.csv")
    assert back["class"].tolist() == ["007", "7", "None", "NA", "1e3"]
    assert back["f1"].tolist()[:2] == [0.5, 0.25] and np.isnan(back["f1"][2])  # numbers stay numbers


@pytest.mark.parametrize("kind", FOLDER_SETS)
def test_class_folders_named_like_numbers_go_through_evaluate_and_visualize(
    kind, cifar10_root, tmp_path, monkeypatch, capsys
):
    folders = FOLDER_SETS[kind]
    data = copy_subset(cifar10_root, tmp_path / "data", 6, 3, CIFAR10_CLASSES[: len(folders)], folders)
    work = tmp_path / "work"
    tiny_finetuned_checkpoint(data / "train", work / "models/finetune.pt", TINY)
    params = {
        "data": {"name": "imagefolder", "root": str(data)},
        "finetune": {"init": "scratch"},
        "evaluate": {"batch_size": 16},
        "visualize": {"num_misclassified": 8, "num_attention": 2},
    }
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    write_csv(
        work / "plots/finetune/history.csv", pd.DataFrame({"epoch": [1], "train_loss": [2.0], "train_acc": [0.2]})
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(work))
    monkeypatch.chdir(work)
    drawn = {}

    def confusion_matrix(matrix, classes, *args):  # what the figure is drawn from, then drawn as the stage asks
        drawn.update(matrix=np.asarray(matrix), classes=list(classes))
        return original(matrix, classes, *args)

    original = plots.confusion_matrix
    monkeypatch.setattr(plots, "confusion_matrix", confusion_matrix)
    load_stage("evaluate").main()
    load_stage("visualize").main()

    predictions = read_csv(work / "plots/evaluate/predictions.csv")
    per_class = read_csv(work / "plots/evaluate/per_class.csv")
    assert per_class["class"].tolist() == folders
    assert predictions["actual"].tolist() == [f for f in folders for _ in range(3)]  # 007 is not 7
    assert set(predictions["predicted"]) <= set(folders)
    assert drawn["classes"] == folders and drawn["matrix"].sum() == len(predictions)
    for i, name in enumerate(folders):
        rows = predictions[predictions["actual"] == name]
        assert drawn["matrix"][i].tolist() == [(rows["predicted"] == other).sum() for other in folders]
    for name in ("confusion_matrix", "misclassified", "finetune_curves", "attention_layers"):
        with Image.open(work / f"plots/visualize/{name}.png") as image:
            assert image.format == "PNG"

    # MLflow: one F1 per class, and the confusion matrix under the names it was drawn with.
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    (evaluate,) = client.search_runs(
        [client.get_experiment_by_name("synthvit").experiment_id], "attributes.run_name = 'evaluate'"
    )
    assert {k for k in evaluate.data.metrics if k.startswith("f1.")} == {f"f1.{name}" for name in folders}
    logged = json.loads(Path(client.download_artifacts(evaluate.info.run_id, "confusion_matrix.json")).read_text())
    assert logged["classes"] == folders

    # `synthvit predict` names the same classes, on its lines and in its table.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["predict", str(data / "test"), "--model", "models/finetune.pt", "--output", "table.csv"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    table = read_csv(work / "table.csv")
    assert set(table["class"]) <= set(folders)
    by_path = table.set_index("path")["class"]
    for line in out.strip().splitlines():
        path, answer = line.rsplit(": ", 1)
        assert answer.split(" ")[0] == by_path[path]

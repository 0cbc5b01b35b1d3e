"""Stage visualize: the figures a person looks at first.

params: data.*, model.img_size, visualize.*, tracking.experiment_name
deps:   plots/{pretrain,finetune}/history.csv, plots/evaluate/*.csv, data/synthetic/
outs:   plots/visualize/{pretrain_curves,finetune_curves,confusion_matrix,misclassified,synthetic_samples}.png
"""

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import confusion_matrix

from synthvit import plots, tracking
from synthvit.config import as_flat_dict, load_params
from synthvit.data import load_split
from synthvit.pipeline import SYNTHETIC_DIR, history_path
from synthvit.runner import run_main

OUT = Path("plots/visualize")
EVALUATE = Path("plots/evaluate")


def misclassified_grid(params, predictions: pd.DataFrame, path: Path) -> Path:
    """The most confident mistakes, with true and predicted labels."""
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    wrong = wrong.sort_values("confidence", ascending=False).head(params.visualize.num_misclassified)
    test_set = load_split(params.data, "test", params.model.img_size)
    images = test_set.images[wrong["index"].tolist()].permute(0, 2, 3, 1).numpy()
    titles = [f"{a} -> {p}\n{c:.0%}" for a, p, c in zip(wrong["actual"], wrong["predicted"], wrong["confidence"])]
    if len(wrong) == 0:
        images, titles = np.zeros((1, 8, 8, 3), np.uint8), ["no mistakes"]
    return plots.image_grid(images, titles, path, f"Most confident mistakes ({len(wrong)} shown)")


def synthetic_grid(count: int, path: Path) -> Path:
    """One image from each of the first `count` fractal categories."""
    folders = sorted(p for p in (SYNTHETIC_DIR / "images").iterdir() if p.is_dir())[:count]
    files = [sorted(folder.glob("*.png"))[0] for folder in folders]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return plots.image_grid(images, [f.parent.name for f in files], path, "Synthetic pre-training categories")


def main() -> None:
    params = load_params()
    run_params = {**as_flat_dict(params.visualize, "visualize"), "model.img_size": params.model.img_size}
    with tracking.stage_run("visualize", run_params, params.tracking.experiment_name) as mlflow:
        predictions = pd.read_csv(EVALUATE / "predictions.csv")
        classes = pd.read_csv(EVALUATE / "per_class.csv")["class"].tolist()
        matrix = confusion_matrix(predictions["actual"], predictions["predicted"], labels=classes)
        figures = [
            plots.training_curves(pd.read_csv(history_path("pretrain")), "pretrain", OUT / "pretrain_curves.png"),
            plots.training_curves(pd.read_csv(history_path("finetune")), "finetune", OUT / "finetune_curves.png"),
            plots.confusion_matrix(matrix, classes, OUT / "confusion_matrix.png"),
            misclassified_grid(params, predictions, OUT / "misclassified.png"),
            synthetic_grid(params.visualize.num_synthetic, OUT / "synthetic_samples.png"),
        ]
        for figure in figures:
            mlflow.log_artifact(str(figure), artifact_path="figures")


if __name__ == "__main__":
    run_main(main)

"""Stage visualize: the figures a person looks at first.

params: data.{name,root,test_per_class,ignore_class_case}, model.img_size, finetune.init, visualize.*
        (tracking.* only names the MLflow run)
deps:   plots/{pretrain,finetune}/history.csv, plots/evaluate/*.csv, data/synthetic/, models/finetune.pt
outs:   plots/visualize/{finetune_curves,confusion_matrix,misclassified}.png,
        plots/visualize/{pretrain_curves,synthetic_samples}.png (finetune.init=pretrained),
        plots/visualize/attention_{layers,rollout}.png (ViTs, visualize.num_attention > 0)
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix

from synthvit.data.fractals import synthetic_samples
from synthvit.data.images import decode_image, load_split
from synthvit.errors import run_main
from synthvit.evaluation import attention, plots
from synthvit.files import SYNTHETIC_DIR, checkpoint_path, from_pipeline_pretraining, history_path, read_csv
from synthvit.models import load_checkpoint, model_from_checkpoint
from synthvit.pipeline import stage_context

OUT = Path("plots/visualize")
EVALUATE = Path("plots/evaluate")


def test_images(params, rows: pd.DataFrame, img_size: int) -> torch.Tensor:
    """uint8 N x 3 x S x S test images of these predictions rows, decoded as evaluate did.

    An image folder decodes just these files; an archive is read whole (it is one file).
    """
    if "path" in rows:
        return torch.from_numpy(np.stack([decode_image(Path(p), img_size) for p in rows["path"]])).permute(0, 3, 1, 2)
    return load_split(params.data, "test", img_size).images[rows["index"].tolist()]


def misclassified_figure(params, predictions: pd.DataFrame):
    """The most confident mistakes, with true and predicted labels; a model without any gets a figure saying so."""
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    if len(wrong) == 0:  # checked first: there are no images to stack
        message = f"no mistakes: all {len(predictions)} test images were classified right"
        return plots.message_figure(message, "Most confident mistakes: none")
    wrong = wrong.sort_values("confidence", ascending=False).head(params.visualize.num_misclassified)
    images = test_images(params, wrong, params.model.img_size).permute(0, 2, 3, 1).numpy()
    titles = [f"{a} -> {p}\n{c:.0%}" for a, p, c in zip(wrong["actual"], wrong["predicted"], wrong["confidence"])]
    return plots.image_grid(images, titles, f"Most confident mistakes ({len(wrong)} shown)")


def misclassified_grid(params, predictions: pd.DataFrame, path: Path) -> Path:
    return plots.save(misclassified_figure(params, predictions), path)  # dvc.yaml declares it: always written


def synthetic_grid(count: int, path: Path) -> Path:
    """Image 0 of each of the first `count` fractal categories, rendered from the manifest."""
    images, names = synthetic_samples(SYNTHETIC_DIR, count)
    return plots.save(plots.image_grid(images, names, "Synthetic pre-training categories"), path)


def spread_over_classes(predictions: pd.DataFrame, count: int) -> pd.DataFrame:
    """`count` test images taking each class in turn (first image of each class, then the second, ...)."""
    rank = predictions.groupby("actual", sort=False).cumcount()
    return predictions.assign(rank=rank).sort_values(["rank", "index"]).head(count)


def attention_figures(params, predictions: pd.DataFrame) -> list[Path]:
    """Per-layer attention and rollout of the fine-tuned model over a few test images; [] for non-ViTs."""
    if params.visualize.num_attention == 0:
        return []
    checkpoint = load_checkpoint(checkpoint_path("finetune"))
    model = model_from_checkpoint(checkpoint)
    if not attention.supports_attention(model):
        print(f"attention maps skipped: {attention.why_unsupported(model)}")
        return []
    img_size = checkpoint["model_config"]["img_size"]
    chosen = spread_over_classes(predictions, params.visualize.num_attention)
    images = test_images(params, chosen, img_size)
    result = attention.compute_attention(model, images, checkpoint["mean"], checkpoint["std"])
    pixels = images.permute(0, 2, 3, 1).numpy()
    captions = [f"{a} -> {p}\n{c:.0%}" for a, p, c in zip(chosen["actual"], chosen["predicted"], chosen["confidence"])]
    return [
        plots.save(attention.attention_figure(pixels, result, captions), OUT / "attention_layers.png"),
        plots.save(attention.rollout_figure(pixels, result, captions), OUT / "attention_rollout.png"),
    ]


def main() -> None:
    with stage_context(
        "visualize", "visualize", needs=[checkpoint_path("finetune"), EVALUATE / "predictions.csv"]
    ) as stage:
        params, mlflow = stage.params, stage.run
        mlflow.log_params({"model.img_size": params.model.img_size, "finetune.init": params.finetune.init})
        predictions = read_csv(EVALUATE / "predictions.csv")
        classes = read_csv(EVALUATE / "per_class.csv")["class"].tolist()  # `0`..`9` stay names, not numbers
        matrix = confusion_matrix(predictions["actual"], predictions["predicted"], labels=classes)
        stage.check_params_unchanged()
        figures = [
            plots.save(
                plots.training_curves(pd.read_csv(history_path("finetune")), "finetune"), OUT / "finetune_curves.png"
            ),
            plots.save(plots.confusion_matrix(matrix, classes), OUT / "confusion_matrix.png"),
            misclassified_grid(params, predictions, OUT / "misclassified.png"),
        ]
        if from_pipeline_pretraining(params.finetune.init, params.finetune.backbone):  # these fractals made its start
            figures += [
                plots.save(
                    plots.training_curves(pd.read_csv(history_path("pretrain")), "pretrain"),
                    OUT / "pretrain_curves.png",
                ),
                synthetic_grid(params.visualize.num_synthetic, OUT / "synthetic_samples.png"),
            ]
        for figure in figures:
            mlflow.log_artifact(str(figure), artifact_path="figures")
        for figure in attention_figures(params, predictions):
            mlflow.log_artifact(str(figure), artifact_path="attention")


if __name__ == "__main__":
    run_main(main)

"""Stage evaluate: score the fine-tuned model on the test split.

params: runtime.*, data.*, evaluate.*, tracking.experiment_name
deps:   models/finetune.pt
outs:   metrics/evaluate.json, plots/evaluate/predictions.csv (confusion), plots/evaluate/per_class.csv
"""

from pathlib import Path

import pandas as pd

from synthvit import tracking
from synthvit.config import as_flat_dict, load_params
from synthvit.data import load_split
from synthvit.engine import autocast_dtype, predict_logits, resolve_device
from synthvit.files import write_csv, write_json
from synthvit.metrics import classification_report
from synthvit.models import load_checkpoint, model_from_checkpoint
from synthvit.pipeline import checkpoint_path
from synthvit.runner import run_main

PLOTS = Path("plots/evaluate")


def main() -> None:
    params = load_params()
    run_params = {**as_flat_dict(params.runtime, "runtime"), **as_flat_dict(params.data, "data"),
                  **as_flat_dict(params.evaluate, "evaluate")}
    checkpoint = load_checkpoint(checkpoint_path("finetune"))
    model = model_from_checkpoint(checkpoint)
    test_set = load_split(params.data, "test", checkpoint["model_config"]["img_size"])
    with tracking.stage_run("evaluate", run_params, params.tracking.experiment_name) as mlflow:
        device = resolve_device(params.runtime)
        logits = predict_logits(model, test_set.images, device, autocast_dtype(params.runtime, device),
                                params.evaluate.batch_size, checkpoint["mean"], checkpoint["std"], desc="evaluate")
        report = classification_report(logits, test_set.labels, test_set.classes)
        confidence, predicted = logits.softmax(1).max(1)
        classes = test_set.classes
        predictions = pd.DataFrame({
            "index": range(len(test_set)),
            "actual": [classes[i] for i in test_set.labels.tolist()],
            "predicted": [classes[i] for i in predicted.tolist()],
            "confidence": confidence.numpy().round(5),
            **({"path": test_set.paths} if test_set.paths else {}),
        })
        per_class = pd.DataFrame([{"class": name, **values} for name, values in report["per_class"].items()])
        summary = {k: v for k, v in report.items() if k not in ("per_class", "confusion")}
        write_csv(PLOTS / "predictions.csv", predictions)
        write_csv(PLOTS / "per_class.csv", per_class)
        write_json(Path("metrics/evaluate.json"), summary)
        mlflow.log_metrics({k: float(v) for k, v in summary.items()})
        mlflow.log_metrics({tracking.metric_name(f"f1.{row['class']}"): row["f1"] for _, row in per_class.iterrows()})
        mlflow.log_dict({"classes": classes, "matrix": report["confusion"]}, "confusion_matrix.json")
        mlflow.log_artifact(str(PLOTS / "per_class.csv"))
        print(f"test top-1 {summary['top1']:.4f}  top-{summary['top5_k']} {summary['top5']:.4f}  "
              f"macro-F1 {summary['macro_f1']:.4f}  on {summary['num_images']} images")


if __name__ == "__main__":
    run_main(main)

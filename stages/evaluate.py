"""Stage evaluate: score the fine-tuned model on the test split.

params: runtime.{device,precision,deterministic}, data.{name,root,test_per_class,ignore_class_case}, evaluate.*
        (tracking.experiment_name only names the MLflow run)
deps:   models/finetune.pt
outs:   metrics/evaluate.json (with ECE), plots/evaluate/predictions.csv (confusion), plots/evaluate/per_class.csv,
        plots/evaluate/calibration.csv and reliability.png (reliability diagram)
"""

from pathlib import Path

import pandas as pd

from synthvit import tracking
from synthvit.calibration import ECE_BINS, expected_calibration_error, reliability_bins, reliability_diagram
from synthvit.config import as_flat_dict, load_params
from synthvit.data import load_split
from synthvit.engine import autocast_dtype, class_probabilities, resolve_device
from synthvit.files import write_csv, write_json
from synthvit.metrics import classification_report
from synthvit.models import load_checkpoint, model_from_checkpoint
from synthvit.paths import checkpoint_path
from synthvit.runner import run_main
from synthvit.timing import write_timing
from synthvit.tracking_check import check_tracking_store

PLOTS = Path("plots/evaluate")


def main() -> None:
    params = load_params()
    check_tracking_store()  # within seconds, before any work: is the MLflow server there and letting us in?
    run_params = {**as_flat_dict(params.runtime, "runtime"), **as_flat_dict(params.data, "data"),
                  **as_flat_dict(params.evaluate, "evaluate")}
    checkpoint = load_checkpoint(checkpoint_path("finetune"))
    model = model_from_checkpoint(checkpoint)
    test_set = load_split(params.data, "test", checkpoint["model_config"]["img_size"])
    with tracking.stage_run("evaluate", run_params, params.tracking.experiment_name) as mlflow:
        device = resolve_device(params.runtime)
        # Shared with `synthvit predict`, so both give the same classes and confidences.
        probs = class_probabilities(model, test_set.images, device, autocast_dtype(params.runtime, device),
                                    params.evaluate.batch_size, checkpoint["mean"], checkpoint["std"],
                                    tta_flip=params.evaluate.tta_flip, desc="evaluate")
        report = classification_report(probs, test_set.labels, test_set.classes)
        confidence, predicted = probs.max(1)
        correct = (predicted == test_set.labels).numpy()
        bins = reliability_bins(confidence.numpy(), correct, ECE_BINS)
        ece = expected_calibration_error(confidence.numpy(), correct, ECE_BINS)
        classes = test_set.classes
        predictions = pd.DataFrame({
            "index": range(len(test_set)),
            "actual": [classes[i] for i in test_set.labels.tolist()],
            "predicted": [classes[i] for i in predicted.tolist()],
            "confidence": confidence.numpy().round(5),
            **({"path": test_set.paths} if test_set.paths else {}),
        })
        per_class = pd.DataFrame([{"class": name, **values} for name, values in report["per_class"].items()])
        per_class["accuracy"] = per_class["recall"]  # of the images of this class, the fraction predicted right
        per_class["mean_confidence"] = [
            float(confidence[test_set.labels == i].mean()) if (test_set.labels == i).any() else float("nan")
            for i in range(len(classes))
        ]
        summary = {k: v for k, v in report.items() if k not in ("per_class", "confusion")}
        summary.update(ece=ece, ece_bins=ECE_BINS, mean_confidence=float(confidence.mean()),
                       tta_flip=int(params.evaluate.tta_flip))
        write_csv(PLOTS / "predictions.csv", predictions)
        write_csv(PLOTS / "per_class.csv", per_class)
        write_csv(PLOTS / "calibration.csv", bins[bins["count"] > 0])  # empty bins have no accuracy to draw
        reliability_diagram(bins, ece, PLOTS / "reliability.png", title="Reliability (test)")
        write_json(Path("metrics/evaluate.json"), summary)
        mlflow.log_artifact(str(write_timing("evaluate")))
        mlflow.log_metrics({k: float(v) for k, v in summary.items()})
        mlflow.log_metrics({tracking.metric_name(f"f1.{row['class']}"): row["f1"] for _, row in per_class.iterrows()})
        mlflow.log_dict({"classes": classes, "matrix": report["confusion"]}, "confusion_matrix.json")
        mlflow.log_artifact(str(PLOTS / "per_class.csv"))
        mlflow.log_table(per_class, "per_class_table.json")
        mlflow.log_artifact(str(PLOTS / "calibration.csv"), artifact_path="calibration")
        mlflow.log_artifact(str(PLOTS / "reliability.png"), artifact_path="calibration")
        print(f"test top-1 {summary['top1']:.4f}  top-{summary['top5_k']} {summary['top5']:.4f}  "
              f"macro-F1 {summary['macro_f1']:.4f}  ECE {ece:.4f}  on {summary['num_images']} images"
              + ("  (flip TTA)" if params.evaluate.tta_flip else ""))


if __name__ == "__main__":
    run_main(main)

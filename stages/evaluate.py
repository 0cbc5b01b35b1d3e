"""Stage evaluate: score the fine-tuned model on the test split.

params: runtime.{device,precision,deterministic}, data.{name,root,test_per_class,ignore_class_case}, evaluate.*
        (tracking.* only names the MLflow run and the registered model that gets the test top-1)
deps:   models/finetune.pt
outs:   metrics/evaluate.json (with ECE), plots/evaluate/predictions.csv (confusion), plots/evaluate/per_class.csv,
        plots/evaluate/calibration.csv and reliability.png (reliability diagram)
"""

from pathlib import Path

import pandas as pd

from synthvit.data.images import load_split
from synthvit.errors import run_main
from synthvit.evaluation import plots
from synthvit.evaluation.calibration import ECE_BINS, expected_calibration_error, reliability_bins, reliability_diagram
from synthvit.evaluation.inference import class_probabilities
from synthvit.evaluation.metrics import classification_report
from synthvit.files import checkpoint_path, metrics_path, text_frame, write_csv, write_json
from synthvit.models import load_checkpoint, model_from_checkpoint
from synthvit.pipeline import stage_context
from synthvit.runtime import autocast_dtype, resolve_device
from synthvit.tracking.registry import record_test_score
from synthvit.tracking.runs import metric_name

PLOTS = Path("plots/evaluate")


def main() -> None:
    with stage_context("evaluate", "runtime", "data", "evaluate", needs=[checkpoint_path("finetune")]) as stage:
        params, mlflow = stage.params, stage.run
        checkpoint = load_checkpoint(checkpoint_path("finetune"))
        model = model_from_checkpoint(checkpoint)
        test_set = load_split(params.data, "test", checkpoint["model_config"]["img_size"])
        device = resolve_device(params.runtime)
        # Shared with `synthvit predict`, so both give the same classes and confidences.
        probs = class_probabilities(
            model,
            test_set.images,
            device,
            autocast_dtype(params.runtime, device),
            params.evaluate.batch_size,
            checkpoint["mean"],
            checkpoint["std"],
            tta_flip=params.evaluate.tta_flip,
            desc="evaluate",
        )
        report = classification_report(probs, test_set.labels, test_set.classes)
        confidence, predicted = probs.max(1)
        correct = (predicted == test_set.labels).numpy()
        bins = reliability_bins(confidence.numpy(), correct, ECE_BINS)
        ece = expected_calibration_error(confidence.numpy(), correct, ECE_BINS)
        classes = test_set.classes
        predictions = text_frame(  # file names that are not UTF-8 survive (files.PATH_ERRORS)
            {
                "index": range(len(test_set)),
                "actual": [classes[i] for i in test_set.labels.tolist()],
                "predicted": [classes[i] for i in predicted.tolist()],
                "confidence": confidence.numpy().round(5),
                **({"path": test_set.paths} if test_set.paths else {}),
            }
        )
        per_class = pd.DataFrame([{"class": name, **values} for name, values in report["per_class"].items()])
        per_class["accuracy"] = per_class["recall"]  # of the images of this class, the fraction predicted right
        per_class["mean_confidence"] = [
            float(confidence[test_set.labels == i].mean()) if (test_set.labels == i).any() else float("nan")
            for i in range(len(classes))
        ]
        summary = {k: v for k, v in report.items() if k not in ("per_class", "confusion")}
        summary.update(
            ece=ece, ece_bins=ECE_BINS, mean_confidence=float(confidence.mean()), tta_flip=int(params.evaluate.tta_flip)
        )
        stage.check_params_unchanged()
        write_csv(PLOTS / "predictions.csv", predictions)
        write_csv(PLOTS / "per_class.csv", per_class)
        # Empty bins have no accuracy to draw; the diagonal (accuracy = confidence) is drawn beside the bins.
        filled = bins[bins["count"] > 0].assign(perfectly_calibrated=lambda b: b["confidence"])
        write_csv(PLOTS / "calibration.csv", filled)
        plots.save(reliability_diagram(bins, ece, title="Reliability (test)"), PLOTS / "reliability.png")
        write_json(metrics_path("evaluate"), summary)
        mlflow.log_metrics({k: float(v) for k, v in summary.items()})
        mlflow.log_metrics({metric_name(f"f1.{row['class']}"): row["f1"] for _, row in per_class.iterrows()})
        mlflow.log_dict({"classes": classes, "matrix": report["confusion"]}, "confusion_matrix.json")
        mlflow.log_artifact(str(PLOTS / "per_class.csv"))
        mlflow.log_table(per_class, "per_class_table.json")
        mlflow.log_artifact(str(PLOTS / "calibration.csv"), artifact_path="calibration")
        mlflow.log_artifact(str(PLOTS / "reliability.png"), artifact_path="calibration")
        if params.tracking.log_model and params.tracking.registered_model:  # finetune registered the model evaluated
            record_test_score(params.tracking.registered_model, checkpoint_path("finetune"), summary["top1"])
        print(
            f"test top-1 {summary['top1']:.4f}  top-{summary['top5_k']} {summary['top5']:.4f}  "
            f"macro-F1 {summary['macro_f1']:.4f}  ECE {ece:.4f}  on {summary['num_images']} images"
            + ("  (flip TTA)" if params.evaluate.tta_flip else "")
        )


if __name__ == "__main__":
    run_main(main)

"""Stage pretrain: train a timm ViT to classify the synthetic fractal categories.

params: seed, runtime.{device,precision,deterministic}, model.*, pretrain.*
        (read but not declared in dvc.yaml, as they do not change the model: the other runtime keys,
        data.num_workers, tracking.experiment_name)
deps:   data/synthetic/ (its manifest: with synthetic.store=manifest, batches are rendered from it)
outs:   models/pretrain.pt, metrics/pretrain.json, plots/pretrain/history.csv
"""

from synthvit import tracking
from synthvit.config import as_flat_dict, load_params
from synthvit.engine import seed_everything
from synthvit.models import create_model
from synthvit.paths import SYNTHETIC_DIR
from synthvit.pipeline import train_and_record
from synthvit.runner import run_main
from synthvit.synthetic_set import load_synthetic
from synthvit.tracking_check import check_tracking_store


def main() -> None:
    params = load_params()
    check_tracking_store()  # within seconds, before any work: is the MLflow server there and letting us in?
    seed_everything(params.seed)  # model init and the new head draw from it
    run_params = {"seed": params.seed, **as_flat_dict(params.runtime, "runtime"),
                  **as_flat_dict(params.model, "model"), **as_flat_dict(params.pretrain, "pretrain")}
    train_set = load_synthetic(SYNTHETIC_DIR, params.model.img_size, params.data.num_workers)
    model = create_model(params.model, num_classes=train_set.num_classes)
    with tracking.stage_run("pretrain", run_params, params.tracking.experiment_name) as mlflow:
        train_and_record("pretrain", model, train_set, params.pretrain, params, mlflow)


if __name__ == "__main__":
    run_main(main)

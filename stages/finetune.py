"""Stage finetune: train on the real dataset from the synthetic pre-trained backbone (new head),
from scratch, or from timm's ImageNet weights (finetune.init).

params: seed, runtime.{device,precision,deterministic}, model.*, finetune.*, data.* but num_workers and download
        (read but not declared in dvc.yaml, as they do not change the model: those, the other runtime keys, tracking.*)
deps:   models/pretrain.pt
outs:   models/finetune.pt, metrics/finetune.json, plots/finetune/history.csv
"""

from synthvit import tracking
from synthvit.config import as_flat_dict, load_params
from synthvit.engine import seed_everything
from synthvit.data import load_split, split_validation
from synthvit.models import backbone_with_new_head, check_same_architecture, create_model, load_checkpoint
from synthvit.paths import checkpoint_path
from synthvit.pipeline import train_and_record
from synthvit.runner import run_main
from synthvit.tracking_check import check_tracking_store


def main() -> None:
    params = load_params()
    check_tracking_store()  # within seconds, before any work: is the MLflow server there and letting us in?
    seed_everything(params.seed)  # model init and the new head draw from it
    run_params = {"seed": params.seed, **as_flat_dict(params.runtime, "runtime"), **as_flat_dict(params.data, "data"),
                  **as_flat_dict(params.model, "model"), **as_flat_dict(params.finetune, "finetune")}
    train_set = load_split(params.data, "train", params.model.img_size)
    if params.data.val_fraction > 0:  # the best epoch is chosen on validation; evaluate reports test once
        train_set, eval_set = split_validation(train_set, params.data.val_fraction, params.seed, params.data.num_workers)
    else:  # curves on the test set, for watching only: the last epoch is kept
        curve_data = params.data
        if params.finetune.curve_test_per_class:  # a curve needs fewer images than the score evaluate gives
            per_class = min(n for n in (params.data.test_per_class, params.finetune.curve_test_per_class) if n)
            curve_data = params.data.model_copy(update={"test_per_class": per_class})
        eval_set = load_split(curve_data, "test", params.model.img_size)
    if params.finetune.init == "pretrained":
        pretrained = load_checkpoint(checkpoint_path("pretrain"))
        check_same_architecture(pretrained, params.model, str(checkpoint_path("pretrain")))
        model = backbone_with_new_head(pretrained, params.model, num_classes=train_set.num_classes)
    elif params.finetune.init == "imagenet":  # the hub, or finetune.imagenet_weights offline
        model = create_model(params.model, num_classes=train_set.num_classes, imagenet_weights=params.finetune.imagenet_weights)
    else:
        model = create_model(params.model, num_classes=train_set.num_classes)
    with tracking.stage_run("finetune", run_params, params.tracking.experiment_name) as mlflow:
        train_and_record("finetune", model, train_set, params.finetune, params, mlflow, eval_set=eval_set,
                         keep_best=params.data.val_fraction > 0)
        if params.tracking.log_model:
            mlflow.log_synthvit_model(model, checkpoint_path("finetune"),
                                      params.tracking.registered_model, params.tracking.model_alias)
        elif params.tracking.registered_model:
            print(f"model not registered as {params.tracking.registered_model!r}: tracking.log_model is false")


if __name__ == "__main__":
    run_main(main)

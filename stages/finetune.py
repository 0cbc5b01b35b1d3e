"""Stage finetune: train on the real dataset from a pre-trained backbone (new head), from scratch,
from mimetic initialisation, or from timm's ImageNet weights (finetune.init).

params: seed, runtime.{device,precision,deterministic}, model.*, finetune.*, data.* but num_workers and download
        (read but not declared in dvc.yaml, as they do not change the model: those, the other runtime keys, tracking.*)
deps:   finetune.backbone (models/pretrain.pt, or a released backbone folder)
outs:   models/finetune.pt, metrics/finetune.json, plots/finetune/history.csv

Every draw of fine-tuning comes from params.finetune_seed (finetune.seed, else seed): arms that share it
(pretrained, scratch, mimetic) share the head's initial weights, the order of the images and their
augmentation, and differ only in the backbone they start from: paired seeds.
"""

from pathlib import Path

from synthvit.data.augment import to_float
from synthvit.data.images import load_split, split_validation
from synthvit.errors import run_main
from synthvit.files import checkpoint_path
from synthvit.models import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    check_same_architecture,
    create_model,
    load_backbone,
    mimetic_init,
    model_from_checkpoint,
    new_head,
)
from synthvit.pipeline import stage_context
from synthvit.runtime import seed_everything
from synthvit.training.engine import train
from synthvit.training.resume import resume_path, training_fingerprint
from synthvit.training.stage import record_training


def pretrained_backbone(params) -> list:
    # Relative to the working directory, as DVC resolves ${finetune.backbone}: in a queued or --temp experiment
    # that is the experiment's copy, whose models/pretrain.pt its own pretrain stage just wrote.
    return [Path(params.finetune.backbone)] if params.finetune.init == "pretrained" else []


def main() -> None:
    with stage_context("finetune", "seed", "runtime", "data", "model", "finetune", needs=pretrained_backbone) as stage:
        params, cfg = stage.params, stage.params.finetune
        seed = params.finetune_seed
        seed_everything(seed)  # a random init draws from it
        train_set = load_split(params.data, "train", params.model.img_size)
        if params.data.val_fraction > 0:  # the best epoch is chosen on validation; evaluate reports test once
            train_set, eval_set = split_validation(train_set, params.data.val_fraction, seed, params.data.num_workers)
        else:  # curves on the test set, for watching only: the last epoch is kept
            curve_data = params.data
            if cfg.curve_test_per_class:  # a curve needs fewer images than the score evaluate gives
                per_class = min(n for n in (params.data.test_per_class, cfg.curve_test_per_class) if n)
                curve_data = params.data.model_copy(update={"test_per_class": per_class})
            eval_set = load_split(curve_data, "test", params.model.img_size)
        backbone = None
        if cfg.init == "pretrained":
            backbone = load_backbone(Path(cfg.backbone))
            check_same_architecture(backbone, params.model, cfg.backbone)
            model = model_from_checkpoint(backbone, drop_path_rate=params.model.drop_path_rate)  # head replaced below
        elif cfg.init == "imagenet":  # the hub, or finetune.imagenet_weights offline
            model = create_model(params.model, num_classes=train_set.num_classes, imagenet_weights=cfg.imagenet_weights)
        else:
            model = create_model(params.model, num_classes=train_set.num_classes)
            if cfg.init == "mimetic":
                mimetic_init(model, seed)
        new_head(model, train_set.num_classes, seed)  # the same head for every arm of a seed
        resume_file = resume_path("finetune", training_fingerprint(model, train_set, cfg, params, seed))
        history = train(
            model,
            train_set,
            cfg,
            params.runtime,
            seed,
            eval_set=eval_set,
            on_epoch=stage.log_epoch,
            desc="finetune",
            resume_file=resume_file,
            keep_best=params.data.val_fraction > 0,
            num_workers=params.data.num_workers,
        )
        made_from = backbone.get("recipe", {}) if backbone else None
        summary = record_training(stage, model, train_set, history, resume_file, eval_set, backbone=made_from)
        tracking = params.tracking
        if tracking.log_model:  # the serving alias moves only to a model at least as good on the same held-out images
            stage.run.log_synthvit_model(
                model,
                checkpoint_path("finetune"),
                input_example=to_float(eval_set.images[:1], DEFAULT_MEAN, DEFAULT_STD).numpy(),  # for the signature
                registered_model=tracking.registered_model,
                alias=tracking.model_alias,
                score=summary["eval_acc"],
                heldout=eval_set.digest[:16],
                arm=cfg.init,
                model_summary=params.model.summary(),
            )
        elif tracking.registered_model:
            print(f"model not registered as {tracking.registered_model!r}: tracking.log_model is false")


if __name__ == "__main__":
    run_main(main)

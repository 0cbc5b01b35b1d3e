"""Stage pretrain: train a timm ViT to classify the synthetic fractal categories.

params: seed, runtime.{device,precision,deterministic}, model.*, pretrain.*
        (read but not declared in dvc.yaml, as they do not change the model: the other runtime keys,
        data.num_workers, tracking.*)
deps:   data/synthetic/ (its manifest: with synthetic.store=manifest, batches are rendered from it)
outs:   models/pretrain.pt, metrics/pretrain.json (eval_acc: the held-out fractal instances),
        plots/pretrain/history.csv
"""

import dataclasses

import torch

from synthvit.data.augment import random_colors
from synthvit.data.fractals import load_heldout, load_synthetic, shuffle_labels
from synthvit.errors import run_main
from synthvit.files import SYNTHETIC_DIR
from synthvit.models import create_model, mimetic_init
from synthvit.pipeline import stage_context
from synthvit.runtime import seed_everything
from synthvit.training.engine import train
from synthvit.training.resume import resume_path, training_fingerprint
from synthvit.training.stage import record_training


def main() -> None:
    with stage_context(
        "pretrain", "seed", "runtime", "model", "pretrain", needs=[SYNTHETIC_DIR / "manifest.json"]
    ) as stage:
        params, cfg = stage.params, stage.params.pretrain
        seed_everything(params.seed)  # the model's initial weights draw from it
        train_set = load_synthetic(SYNTHETIC_DIR, params.model.img_size, params.data.num_workers)
        heldout = None
        if cfg.heldout_per_class:  # instances no epoch draws: is the task learned, or memorised?
            heldout = load_heldout(SYNTHETIC_DIR, params.model.img_size, cfg.heldout_per_class)
            if cfg.random_colors:  # scored in colour as trained, one fixed draw
                colored = random_colors(heldout.images, torch.Generator().manual_seed(params.seed))
                heldout = dataclasses.replace(heldout, images=colored)
        if cfg.labels == "shuffled":
            train_set = shuffle_labels(train_set, params.seed)
        model = create_model(params.model, num_classes=train_set.num_classes)
        if cfg.init == "mimetic":
            mimetic_init(model, params.seed)
        resume_file = resume_path("pretrain", training_fingerprint(model, train_set, cfg, params, params.seed))
        history = train(
            model,
            train_set,
            cfg,
            params.runtime,
            params.seed,
            eval_set=heldout,
            on_epoch=stage.log_epoch,
            desc="pretrain",
            resume_file=resume_file,
            num_workers=params.data.num_workers,
        )
        record_training(stage, model, train_set, history, resume_file, eval_set=heldout)


if __name__ == "__main__":
    run_main(main)

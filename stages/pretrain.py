"""Stage pretrain: train a timm ViT to classify the synthetic fractal categories.

params: seed, runtime.{device,precision,deterministic}, model.*, pretrain.*
        (read but not declared in dvc.yaml, as they do not change the model: the other runtime keys,
        data.num_workers, tracking.*)
deps:   data/synthetic/ (its manifest: with synthetic.store=manifest, batches are rendered from it)
outs:   models/pretrain.pt, metrics/pretrain.json, plots/pretrain/history.csv
"""

from synthvit.data.fractals import load_synthetic, shuffle_labels
from synthvit.errors import run_main
from synthvit.files import SYNTHETIC_DIR
from synthvit.models import create_model
from synthvit.runtime import seed_everything
from synthvit.tracking.runs import stage_context
from synthvit.training.stage import train_and_record


def main() -> None:
    with stage_context(
        "pretrain", "seed", "runtime", "model", "pretrain", needs=[SYNTHETIC_DIR / "manifest.json"]
    ) as stage:
        params = stage.params
        seed_everything(params.seed)  # the model's initial weights draw from it
        train_set = load_synthetic(SYNTHETIC_DIR, params.model.img_size, params.data.num_workers)
        if params.pretrain.labels == "shuffled":
            train_set = shuffle_labels(train_set, params.seed)
        model = create_model(params.model, num_classes=train_set.num_classes)
        _, timing = train_and_record("pretrain", model, train_set, params.pretrain, params, stage.run)
        stage.timing.update(timing)


if __name__ == "__main__":
    run_main(main)

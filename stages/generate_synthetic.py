"""Stage generate_synthetic: render the fractal pre-training dataset.

params: seed, synthetic.*  (tracking.experiment_name is read too, but only names the MLflow run)
outs:   data/synthetic/ (manifest.json, preview.png; store=shards: shards/*.npy; store=images: images/<class>/*.png)
"""

import time

from synthvit import tracking
from synthvit.config import as_flat_dict, load_params
from synthvit.paths import SYNTHETIC_DIR
from synthvit.runner import run_main
from synthvit.timing import write_timing
from synthvit.tracking_check import check_tracking_store
from synthvit.synthetic import generate_dataset


def main() -> None:
    params = load_params()
    check_tracking_store()  # within seconds, before any work: is the MLflow server there and letting us in?
    run_params = {"seed": params.seed, **as_flat_dict(params.synthetic, "synthetic")}
    with tracking.stage_run("generate_synthetic", run_params, params.tracking.experiment_name) as mlflow:
        started = time.perf_counter()
        manifest = generate_dataset(params.synthetic, params.seed, SYNTHETIC_DIR)
        seconds = time.perf_counter() - started
        fill_rates = [c["fill_rate"] for c in manifest["classes"]]
        num_images = len(manifest["classes"]) * manifest["images_per_class"]  # stored or rendered on the fly
        print(f"generate_synthetic: {len(manifest['classes'])} categories, {num_images} images "
              f"(store={params.synthetic.store}) in {seconds:.1f} s")
        mlflow.log_metrics({
            "num_classes": len(manifest["classes"]),
            "num_images": num_images,
            "mean_fill_rate": sum(fill_rates) / len(fill_rates),
            "wall_seconds": seconds,
            "images_per_s": num_images / seconds,
        })
        mlflow.log_artifact(str(write_timing("generate_synthetic", generate_seconds=round(seconds, 2))))
        mlflow.log_artifact(str(SYNTHETIC_DIR / "manifest.json"))
        mlflow.log_artifact(str(SYNTHETIC_DIR / "preview.png"))


if __name__ == "__main__":
    run_main(main)

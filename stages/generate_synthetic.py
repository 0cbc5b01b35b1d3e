"""Stage generate_synthetic: render the fractal pre-training dataset.

params: seed, synthetic.*
outs:   data/synthetic/ (manifest.json, preview.png; store=shards: shards/*.npy; store=images: images/<class>/*.png)
"""

import time

from synthvit.errors import run_main
from synthvit.files import SYNTHETIC_DIR
from synthvit.pipeline import stage_context
from synthvit.synthetic.generate import generate_dataset


def main() -> None:
    with stage_context("generate_synthetic", "seed", "synthetic") as stage:
        started = time.perf_counter()
        manifest = generate_dataset(
            stage.params.synthetic, stage.params.seed, SYNTHETIC_DIR, before_publishing=stage.check_params_unchanged
        )
        seconds = time.perf_counter() - started
        fill_rates = [c["fill_rate"] for c in manifest["classes"]]
        num_images = len(manifest["classes"]) * manifest["images_per_class"]  # stored or rendered on the fly
        print(
            f"generate_synthetic: {len(manifest['classes'])} categories, {num_images} images "
            f"(store={stage.params.synthetic.store}) in {seconds:.1f} s"
        )
        stage.run.log_metrics(
            {
                "num_classes": len(manifest["classes"]),
                "num_images": num_images,
                "mean_fill_rate": sum(fill_rates) / len(fill_rates),
                "generate_seconds": seconds,
            }
        )
        stage.run.log_artifact(str(SYNTHETIC_DIR / "manifest.json"))
        stage.run.log_artifact(str(SYNTHETIC_DIR / "preview.png"))
        stage.timing["generate_seconds"] = round(seconds, 2)


if __name__ == "__main__":
    run_main(main)

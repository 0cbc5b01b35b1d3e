"""The synthetic settings the demo and the full recipe train on make learnable images at the training resolution.

Both read their settings where users set them: recipes.yaml's `demo` and params.yaml.
A few categories are rendered with those settings and decoded at model.img_size, as pre-training
sees them: every category passes the official acceptance rule, the images are neither empty nor
saturated, and their structure tells categories apart (each image's nearest neighbour is another
instance of its own category far more often than chance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synthvit.config import SyntheticConfig, apply_overrides, load_recipes, parse_params, read_yaml, recipe_overrides
from synthvit.data.fractals import load_synthetic
from synthvit.data.images import TensorImages
from synthvit.synthetic.generate import generate_dataset

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES, INSTANCES = 8, 6


def recipe_params(profile: str):
    """params.yaml, with the demo's recipe applied as `dvc exp run -S` applies it."""
    raw = read_yaml(ROOT / "params.yaml")
    if profile == "demo":
        raw = apply_overrides(raw, recipe_overrides("demo", load_recipes(ROOT / "recipes.yaml")))
    return parse_params(raw)


def nearest_neighbour_agreement(images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose nearest other image has the same label; the distance is
    the pixel distance to the closest of the other image's four flips (instances are flipped)."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    flips = [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
    distances = np.min(
        [((flat[:, None] - f.reshape(len(f), -1)[None].astype(np.float64)) ** 2).sum(-1) for f in flips], axis=0
    )
    np.fill_diagonal(distances, np.inf)
    return float((labels[distances.argmin(1)] == labels).mean())


@pytest.mark.parametrize("profile", ["demo", "recipe"])
def test_the_recipe_renders_learnable_fractals_at_the_training_resolution(tmp_path, profile):
    params = recipe_params(profile)
    cfg = SyntheticConfig(
        **{**params.synthetic.model_dump(), "num_classes": CATEGORIES, "instances_per_class": INSTANCES}
    )
    manifest = generate_dataset(cfg, params.seed, tmp_path, progress=False)
    assert all(entry["fill_rate"] >= cfg.fill_rate for entry in manifest["classes"])  # the official rule

    seen = load_synthetic(tmp_path, params.model.img_size, num_workers=1)  # what pre-training trains on
    pixels = seen.images if isinstance(seen, TensorImages) else seen.source.tensor()  # store=manifest: rendered batches
    images, labels = pixels[:, 0].numpy(), seen.labels.numpy()
    assert images.shape[1:] == (params.model.img_size, params.model.img_size)
    ink = images.mean(axis=(1, 2)) / cfg.gray_value
    assert ink.min() > 0.05 and ink.max() < 0.8, f"ink coverage {ink.round(2)}: empty or saturated images"
    agreement = nearest_neighbour_agreement(images, labels)
    assert agreement >= 0.75, (
        f"nearest neighbour agrees on the category for {agreement:.0%} (chance {1 / CATEGORIES:.0%})"
    )

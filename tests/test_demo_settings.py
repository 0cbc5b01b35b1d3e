"""The synthetic settings the demo and the full recipe train on make learnable images at the training resolution.

Both read their settings where users set them: the Makefile's DEMO_OVERRIDES and params.yaml.
A few categories are rendered with those settings and decoded at model.img_size, as pre-training
sees them: every category passes the official acceptance rule, the images are neither empty nor
saturated, and their structure tells categories apart (each image's nearest neighbour is another
instance of its own category far more often than chance).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from synthvit.config import SyntheticConfig, parse_params
from synthvit.synthetic_set import load_synthetic
from synthvit.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES, INSTANCES = 8, 6


def demo_overrides() -> dict[str, object]:
    """`-S key=value` pairs of the Makefile's DEMO_OVERRIDES (make variables left as text)."""
    makefile = (ROOT / "Makefile").read_text()
    block = re.search(r"^DEMO_OVERRIDES = \\\n((?:.*\\\n)*.*\n)", makefile, re.MULTILINE).group(1)
    return {key: as_dvc_reads_it(value) for key, value in re.findall(r"-S (\S+?)=(\S+)", block)}


def as_dvc_reads_it(text: str):
    """YAML 1.2, as `dvc exp run -S` reads a value: 1e-3 is a number (PyYAML's 1.1 reads it as text)."""
    value = yaml.safe_load(text)
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def recipe_params(profile: str):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    if profile == "demo":
        for key, value in demo_overrides().items():
            section, name = key.split(".")
            if not (isinstance(value, str) and value.startswith("$(")):
                raw.setdefault(section, {})[name] = value
    return parse_params(raw)


def nearest_neighbour_agreement(images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose nearest other image has the same label; the distance is
    the pixel distance to the closest of the other image's four flips (instances are flipped)."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    flips = [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
    distances = np.min([((flat[:, None] - f.reshape(len(f), -1)[None].astype(np.float64)) ** 2).sum(-1)
                        for f in flips], axis=0)
    np.fill_diagonal(distances, np.inf)
    return float((labels[distances.argmin(1)] == labels).mean())


def test_demo_overrides_are_read_from_the_makefile():
    overrides = demo_overrides()
    assert overrides["synthetic.patch"] in ("full", "random") and overrides["model.patch_embed"] in ("linear", "conv")
    assert recipe_params("demo").synthetic.num_classes == overrides["synthetic.num_classes"]


@pytest.mark.parametrize("profile", ["demo", "recipe"])
def test_the_recipe_renders_learnable_fractals_at_the_training_resolution(tmp_path, profile):
    params = recipe_params(profile)
    cfg = SyntheticConfig(**{**params.synthetic.model_dump(), "num_classes": CATEGORIES,
                             "instances_per_class": INSTANCES})
    manifest = generate_dataset(cfg, params.seed, tmp_path, progress=False)
    assert all(entry["fill_rate"] >= cfg.fill_rate for entry in manifest["classes"])  # the official rule

    seen = load_synthetic(tmp_path, params.model.img_size, num_workers=1)  # what pre-training trains on
    pixels = seen.source.tensor() if seen.source is not None else seen.images  # store=manifest: rendered batches
    images, labels = pixels[:, 0].numpy(), seen.labels.numpy()
    assert images.shape[1:] == (params.model.img_size, params.model.img_size)
    ink = images.mean(axis=(1, 2)) / cfg.gray_value
    assert ink.min() > 0.05 and ink.max() < 0.8, f"ink coverage {ink.round(2)}: empty or saturated images"
    agreement = nearest_neighbour_agreement(images, labels)
    assert agreement >= 0.75, f"nearest neighbour agrees on the category for {agreement:.0%} (chance {1 / CATEGORIES:.0%})"

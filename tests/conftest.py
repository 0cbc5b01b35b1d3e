"""Shared fixtures: real CIFAR-10 images from ../shared/datasets/cifar10 (or $SYNTHVIT_CIFAR10)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def find_cifar10() -> Path | None:
    candidates = [os.environ.get("SYNTHVIT_CIFAR10"), REPO.parent / "shared/datasets/cifar10", REPO / "../shared/datasets/cifar10"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train").is_dir():
            return Path(candidate).resolve()
    return None


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """The real CIFAR-10 ImageFolder. Missing: skipped on a laptop, an error in CI."""
    root = find_cifar10()
    if root is None:
        message = "real CIFAR-10 ImageFolder not found: set SYNTHVIT_CIFAR10 or put it at ../shared/datasets/cifar10"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


def copy_subset(source: Path, dest: Path, train_per_class: int, test_per_class: int, classes=CIFAR10_CLASSES) -> Path:
    """A small ImageFolder of real images: dest/{train,test}/<class>/*.jpg."""
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for name in classes:
            out = dest / split / name
            out.mkdir(parents=True, exist_ok=True)
            for path in sorted((source / split / name).iterdir())[:count]:
                shutil.copy(path, out / path.name)
    return dest


@pytest.fixture
def small_imagefolder(cifar10_root, tmp_path) -> Path:
    return copy_subset(cifar10_root, tmp_path / "cifar_small", train_per_class=6, test_per_class=3)

"""Where the stages write their outputs, declared the same way in dvc.yaml.

Its own module so that a stage that only needs a path (generate_synthetic, evaluate,
visualize) does not import the training code, and so does not depend on it in dvc.yaml.
"""

from pathlib import Path

SYNTHETIC_DIR = Path("data/synthetic")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")


def checkpoint_path(stage: str) -> Path:
    return MODELS_DIR / f"{stage}.pt"


def metrics_path(stage: str) -> Path:
    return METRICS_DIR / f"{stage}.json"


def history_path(stage: str) -> Path:
    return PLOTS_DIR / stage / "history.csv"

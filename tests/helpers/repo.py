"""A repository to run the real pipeline in: a snapshot of this working tree as a fresh git repo,
the environment a user's shell has, real CIFAR-10 images, and `dvc` run as a user runs it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STAGES = ["generate_synthetic", "pretrain", "finetune", "evaluate", "visualize"]
# What the pipeline computes, byte for byte the same for the same params (figures and timing files aside).
COMPUTED_OUTPUTS = [
    "data/synthetic/manifest.json",
    "models/pretrain.pt",
    "models/finetune.pt",
    "metrics/pretrain.json",
    "metrics/finetune.json",
    "metrics/evaluate.json",
    "plots/pretrain/history.csv",
    "plots/finetune/history.csv",
    "plots/evaluate/predictions.csv",
    "plots/evaluate/per_class.csv",
    "plots/evaluate/calibration.csv",
]
# The pipeline at test size: a 2-block ViT, 10 fractal categories, seconds per stage.
TINY = [
    "synthetic.num_classes=10",
    "synthetic.instances_per_class=4",
    "synthetic.image_size=32",
    "synthetic.num_points=3000",
    "synthetic.patch=random",
    "model.embed_dim=48",
    "model.depth=2",
    "model.num_heads=3",
    "model.patch_size=4",
    "pretrain.epochs=2",
    "pretrain.batch_size=16",
    "pretrain.warmup_epochs=0",
    "finetune.epochs=4",
    "finetune.batch_size=32",
    "finetune.warmup_epochs=0",
    "finetune.lr=2e-3",
    "finetune.mixup_alpha=0",
    "finetune.cutmix_alpha=0",
    "finetune.random_erasing=0",
    "evaluate.batch_size=64",
    "visualize.num_misclassified=8",
    "visualize.num_synthetic=10",
]


def unavailable(message: str):
    """What a test does when data or a tool it needs is missing: skipped on a laptop, a failure in CI
    (CI=true, which .ci/run sets), where a skip would look green."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def find_cifar10() -> Path | None:
    candidates = [
        os.environ.get("SYNTHVIT_CIFAR10"),
        REPO.parent / "shared/datasets/cifar10",
        REPO / "../shared/datasets/cifar10",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train").is_dir():
            return Path(candidate).resolve()
    return None


def copy_subset(
    source: Path, dest: Path, train_per_class: int, test_per_class: int, classes=CIFAR10_CLASSES, folders=None
) -> Path:
    """A small ImageFolder of real images: dest/{train,test}/<class>/*.jpg. `folders`: the folder each of
    `classes` is copied into (a data set whose classes are named `0`..`9`), by default the class's own name."""
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for name, folder in zip(classes, folders or classes, strict=True):
            out = dest / split / folder
            out.mkdir(parents=True, exist_ok=True)
            for path in sorted((source / split / name).iterdir())[:count]:
                shutil.copy(path, out / path.name)
    return dest


def update_params(repo: Path, sections: dict) -> None:
    """Merge {section: {key: value}} into the repo's params.yaml, as a user editing it would."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def copy_repo(repo: Path, dest: Path) -> Path:
    """A copy of a repository a test may change: its git history and experiments, DVC cache and MLflow store."""
    return Path(shutil.copytree(repo, dest, symlinks=True))


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def snapshot_repo(dest: Path) -> Path:
    """dest: a new git repo (branch main, one commit) of this working tree's tracked and new files."""
    dest.mkdir()
    files = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO).split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git("init", "-q", "-b", "main", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "-q", "-m", "snapshot", cwd=dest)
    return dest


def pipeline_env(repo: Path) -> dict:
    """The environment a user's shell would have: the venv's tools on PATH, a git identity."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        GIT_AUTHOR_NAME="synthvit-test",
        GIT_AUTHOR_EMAIL="test@synthvit.invalid",
        GIT_COMMITTER_NAME="synthvit-test",
        GIT_COMMITTER_EMAIL="test@synthvit.invalid",
        DVC_NO_ANALYTICS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def dvc(repo: Path, *args: str, timeout: int = 900) -> str:
    """`dvc ARGS` in `repo` as a user runs it; fails the test with DVC's output when it fails."""
    result = subprocess.run(
        ["dvc", *args], cwd=repo, env=pipeline_env(repo), capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{output[-6000:]}"
    return output


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran, in order."""
    return re.findall(r"Running stage '([\w]+)'", output)

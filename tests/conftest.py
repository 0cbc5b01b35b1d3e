"""Shared fixtures: real CIFAR-10 images from ../shared/datasets/cifar10 (or $SYNTHVIT_CIFAR10)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
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


def update_params(repo: Path, sections: dict) -> None:
    """Merge {section: {key: value}} into the repo's params.yaml, as a user editing it would."""
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A fresh git repo holding this working tree's files (tracked and new), as a clone would."""
    return snapshot_repo(tmp_path / "repo")


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
    env.update(GIT_AUTHOR_NAME="synthvit-test", GIT_AUTHOR_EMAIL="test@synthvit.invalid",
               GIT_COMMITTER_NAME="synthvit-test", GIT_COMMITTER_EMAIL="test@synthvit.invalid",
               DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    return env


def tiny_finetuned_checkpoint(train_folder: Path, path: Path, model_cfg) -> Path:
    """A tiny ViT fine-tuned for a few epochs on the real images in train_folder, saved as a checkpoint."""
    import torch

    from synthvit.config import RuntimeConfig, TrainConfig
    from synthvit.data import load_image_folder
    from synthvit.engine import train
    from synthvit.models import create_model, save_checkpoint

    train_set = load_image_folder(train_folder, model_cfg.img_size)
    torch.manual_seed(0)
    model = create_model(model_cfg, num_classes=train_set.num_classes)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=2e-3, warmup_epochs=0, mixup_alpha=0, cutmix_alpha=0, random_erasing=0)
    train(model, train_set, cfg, RuntimeConfig(device="cpu"), seed=0)
    save_checkpoint(path, model, model_cfg, train_set.classes)
    return path


@contextlib.contextmanager
def running_server(command: list[str], ready_url: str, log: Path, timeout: float = 120, **popen):
    """A server process answering 200 on `ready_url`, stopped with all its children afterwards."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"{command[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{command[0]} did not answer on {ready_url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: the server's workers stop with it
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

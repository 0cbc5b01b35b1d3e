"""kill -9 in the middle of finetune, then `dvc repro` again: it continues and ends as an uninterrupted run."""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from conftest import copy_subset, pipeline_env

pytestmark = pytest.mark.e2e

TINY = {
    "synthetic": {"num_classes": 4, "instances_per_class": 2, "image_size": 32, "num_points": 2000},
    "model": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8},
    "pretrain": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0},
    "finetune": {"epochs": 5, "batch_size": 32, "warmup_epochs": 0, "checkpoint_every": 1},
    "runtime": {"deterministic": True},
}


def dvc(repo, *args):
    result = subprocess.run(["dvc", *args], cwd=repo, env=pipeline_env(repo), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


def finetune_metrics(repo):
    metrics = json.loads((repo / "metrics/finetune.json").read_text())
    return {k: v for k, v in metrics.items() if k not in ("wall_seconds", "train_images_per_s")}


def test_killed_finetune_resumes_to_the_same_result(repo_copy, cifar10_root, tmp_path):
    repo = repo_copy
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    data = copy_subset(cifar10_root, tmp_path / "cifar", train_per_class=40, test_per_class=10)
    params["data"].update(name="imagefolder", root=str(data))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(repo, "repro", "pretrain")

    # Start finetune and kill -9 the whole DVC process group once an epoch has been saved.
    process = subprocess.Popen(["dvc", "repro", "finetune"], cwd=repo, env=pipeline_env(repo), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume_dir = repo / ".synthvit/resume"
    deadline = time.time() + 300
    while not list(resume_dir.glob("finetune-*.pt")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "finetune finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (repo / "metrics/finetune.json").exists()

    output = dvc(repo, "repro", "finetune")
    assert "finetune: resuming after epoch" in output
    resumed = finetune_metrics(repo)
    assert not list(resume_dir.glob("finetune-*.pt"))  # removed once finished

    dvc(repo, "repro", "--force", "finetune")  # the same run, uninterrupted
    assert finetune_metrics(repo) == resumed

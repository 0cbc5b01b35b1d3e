"""kill -9 or SIGTERM in the middle of finetune, then `dvc repro` again: it continues and ends as an
uninterrupted run."""

import json
import os
import signal
import subprocess
import time

import psutil
import pytest
import yaml

from helpers.repo import copy_repo, copy_subset, pipeline_env, snapshot_repo, update_params

pytestmark = pytest.mark.e2e

TINY = {
    "synthetic": {"num_classes": 4, "instances_per_class": 2, "image_size": 32, "num_points": 2000},
    "model": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8},
    "pretrain": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0},
    "finetune": {"epochs": 5, "batch_size": 32, "warmup_epochs": 0, "checkpoint_every": 1},
    "runtime": {"deterministic": True},
}


def dvc(repo, *args):
    result = subprocess.run(
        ["dvc", *args], cwd=repo, env=pipeline_env(repo), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


def finetune_metrics(repo):
    metrics = json.loads((repo / "metrics/finetune.json").read_text())
    return {k: v for k, v in metrics.items() if k not in ("wall_seconds", "train_images_per_s")}


@pytest.fixture(scope="module")
def pretrained_once(cifar10_root, tmp_path_factory):
    """The tiny recipe on real CIFAR-10 images, pre-trained once for the module."""
    base = tmp_path_factory.mktemp("pretrained")
    repo = snapshot_repo(base / "repo")
    data = copy_subset(cifar10_root, base / "cifar", train_per_class=40, test_per_class=10)
    update_params(repo, {**TINY, "data": {"name": "imagefolder", "root": str(data)}})
    dvc(repo, "repro", "pretrain")
    return repo


@pytest.fixture
def pretrained_repo(pretrained_once, tmp_path):
    """A copy of the pre-trained repository (its DVC cache and MLflow store too): ready for finetune."""
    return copy_repo(pretrained_once, tmp_path / "repo")


def signal_finetune(repo, sig, args=()):
    """`dvc repro finetune`, sent `sig` (all its processes, as `kill` on a job does) once an epoch is saved;
    returns the resume state once every process has ended."""
    process = subprocess.Popen(
        ["dvc", "repro", *args, "finetune"],
        cwd=repo,
        env=pipeline_env(repo),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    resume_dir = repo / ".synthvit/resume"
    deadline = time.time() + 300
    while not list(resume_dir.glob("finetune-*.pt")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "finetune finished before the signal"
    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    os.killpg(process.pid, sig)
    _, alive = psutil.wait_procs(family, timeout=120)
    assert not alive, f"still running 2 minutes after signal {sig}: {alive}"
    process.wait()
    (state,) = resume_dir.glob("finetune-*.pt")
    return state


def test_killed_finetune_resumes_to_the_same_result(pretrained_repo):
    repo = pretrained_repo
    signal_finetune(repo, signal.SIGKILL)
    assert not (repo / "metrics/finetune.json").exists()

    output = dvc(repo, "repro", "finetune")
    assert "finetune: resuming after epoch" in output
    resumed = finetune_metrics(repo)
    assert not list((repo / ".synthvit/resume").glob("finetune-*.pt"))  # removed once finished

    dvc(repo, "repro", "--force", "finetune")  # the same run, uninterrupted
    assert finetune_metrics(repo) == resumed


def test_terminated_finetune_is_killed_in_mlflow_and_resumes(pretrained_repo):
    from mlflow import MlflowClient

    repo = pretrained_repo

    signal_finetune(repo, signal.SIGTERM)
    # No half-written output: neither the declared outputs nor an atomic writer's temporary file.
    assert not (repo / "metrics/finetune.json").exists() and not (repo / "models/finetune.pt").exists()
    assert not [p for p in repo.rglob("*.tmp-*") if ".dvc" not in p.parts]
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("synthvit").experiment_id])
    (finetune,) = [r for r in runs if r.info.run_name == "finetune"]
    (parent,) = [r for r in runs if r.info.run_id == finetune.data.tags["mlflow.parentRunId"]]
    assert (finetune.info.status, parent.info.status) == ("KILLED", "KILLED")

    output = dvc(repo, "repro", "finetune")
    assert "finetune: resuming after epoch" in output
    resumed = finetune_metrics(repo)

    # Terminated again, and its resume state then cut short (a full disk): ignored with a warning, training starts
    # over, and ends where the resumed run ended, the uninterrupted result.
    state = signal_finetune(repo, signal.SIGTERM, ["--force"])
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])
    output = dvc(repo, "repro", "--force", "finetune")  # not restored from the run cache: it must train
    assert (
        f"warning: resume state .synthvit/resume/{state.name} is damaged (truncated or not a PyTorch file); "
        "removed it: training starts over" in output
    )
    assert "resuming after epoch" not in output
    assert finetune_metrics(repo) == resumed


def test_params_edited_during_a_real_dvc_repro_are_refused_and_never_locked(pretrained_repo):
    """While `dvc repro` trains finetune with lr 0.002, params.yaml is rewritten to 0.0005 (an editor, or a refused
    `dvc exp run -S`). The stage stops before writing anything, so dvc.lock never pairs 0.0005 with a model
    trained at 0.002; set back, the next `dvc repro` resumes from the saved state instead of training again."""
    repo = pretrained_repo
    update_params(repo, {"finetune": {"lr": 0.002}})
    original = (repo / "params.yaml").read_text()
    process = subprocess.Popen(
        ["dvc", "repro", "finetune"],
        cwd=repo,
        env=pipeline_env(repo),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    resume_dir = repo / ".synthvit/resume"
    deadline = time.time() + 300
    while not list(resume_dir.glob("finetune-*.pt")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    update_params(repo, {"finetune": {"lr": 0.0005}})  # training is under way: an epoch is saved
    output, _ = process.communicate(timeout=600)
    assert process.returncode != 0, output[-3000:]
    assert (
        "error: params.yaml changed while finetune ran: finetune.lr was 0.002 when it started and is 0.0005" in output
    )
    assert "Traceback" not in output
    assert not (repo / "models/finetune.pt").exists() and not (repo / "metrics/finetune.json").exists()
    assert "finetune" not in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]  # nothing locked for it
    assert list(resume_dir.glob("finetune-*.pt"))  # the training done is kept

    (repo / "params.yaml").write_text(original)
    output = dvc(repo, "repro", "finetune")
    assert "finetune: resuming after epoch" in output
    locked = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["finetune"]["params"]["params.yaml"]
    assert locked["finetune"]["lr"] == 0.002 and (repo / "models/finetune.pt").is_file()

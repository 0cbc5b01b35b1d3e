"""Faults injected into the real pipeline (real DVC in a git repo, real SQLite MLflow store, real CIFAR-10
images), each compared with one uninterrupted reference run of the same tiny recipe:

- kill -9 of `dvc repro` in every stage, re-run each time: the outputs end byte-identical to the
  reference and no temporary file is left;
- a disk that fills at finetune's final checkpoint: one line, nothing half-written, the resume
  state kept; with room again, `dvc repro` writes the reference's model without training;
- a read-only checkout, a damaged mlflow.db, SIGTERM during evaluate;
- a test image whose file name is not UTF-8, in every run (the reference's evaluate and visualize).

Mounts (a small tmpfs, a read-only bind mount) need root or CAP_SYS_ADMIN; those tests skip
with the reason elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import yaml

from helpers.mounts import read_only_view, resize, small_disk
from helpers.repo import (
    COMPUTED_OUTPUTS,
    copy_repo,
    copy_subset,
    dvc,
    pipeline_env,
    snapshot_repo,
    stages_run,
    update_params,
)
from synthvit.errors import UserError
from synthvit.tracking import store

pytestmark = pytest.mark.e2e

TINY = {
    "synthetic": {"num_classes": 4, "instances_per_class": 2, "image_size": 32, "num_points": 2000},
    "model": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8},
    "pretrain": {"epochs": 2, "batch_size": 8, "warmup_epochs": 0, "checkpoint_every": 1},
    "finetune": {"epochs": 3, "batch_size": 16, "warmup_epochs": 0, "checkpoint_every": 1},
    "runtime": {"deterministic": True},
    "visualize": {"num_misclassified": 4, "num_synthetic": 4, "num_attention": 2},
    "tracking": {"log_model": False},
}
CLASSES = ["airplane", "cat", "ship", "truck"]
ODD_NAME = b"\xff-not-utf8.jpg"  # a test image whose name is not valid UTF-8 (Linux allows any bytes)
OUTPUTS = COMPUTED_OUTPUTS
TEMPORARY = re.compile(r"\.(tmp|old)-\d+$")  # files.temp_path: what a writer leaves when it is killed


@pytest.fixture(scope="module")
def images(cifar10_root, tmp_path_factory) -> Path:
    """4 classes of real CIFAR-10 images; one test image renamed to bytes that are not UTF-8."""
    root = copy_subset(
        cifar10_root, tmp_path_factory.mktemp("data") / "cifar", train_per_class=12, test_per_class=4, classes=CLASSES
    )
    cat = root / "test/cat"
    first = sorted(cat.iterdir())[0]
    os.rename(first, os.fsencode(cat) + b"/" + ODD_NAME)
    return root


def new_repo(folder: Path, images: Path) -> Path:
    repo = snapshot_repo(folder)
    update_params(repo, {**TINY, "data": {"name": "imagefolder", "root": str(images)}})
    return repo


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> dict:
    """The uninterrupted run: {"repo", "pretrained" (a copy of the repo once pretrain ran), "outputs"}."""
    base = tmp_path_factory.mktemp("reference")
    repo = new_repo(base / "repo", images)
    dvc(repo, "repro", "pretrain")
    pretrained = base / "pretrained"
    copy_repo(repo, pretrained)
    dvc(repo, "repro")
    return {"repo": repo, "pretrained": pretrained, "outputs": {name: (repo / name).read_bytes() for name in OUTPUTS}}


def run(repo: Path, *command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A stage script or `synthvit` command run in `repo` as DVC (or a user) runs it."""
    return subprocess.run(
        list(command), cwd=repo, env={**pipeline_env(repo), **(env or {})}, capture_output=True, text=True, timeout=600
    )


def cli_in(repo: Path, capsys, monkeypatch, *args: str) -> subprocess.CompletedProcess:
    """`synthvit ARGS` in `repo`, in this process (torch and MLflow are imported once for all of them)."""
    from synthvit.commands.cli import main

    monkeypatch.chdir(repo)
    for name in [n for n in os.environ if n.startswith(("DVC_", "MLFLOW_"))]:
        monkeypatch.delenv(name)
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["synthvit", *args], exit_info.value.code, out, err)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error a failed command printed: exit 2, no traceback; its last stderr line, `error: ...`."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-4000:]
    return last


def temporary_files(repo: Path) -> list[Path]:
    return [p for p in repo.rglob("*") if TEMPORARY.search(p.name) and not {".git", ".dvc"} & set(p.parts)]


def locked_stages(repo: Path) -> set[str]:
    lock = repo / "dvc.lock"
    return set((yaml.safe_load(lock.read_text()) or {}).get("stages", {})) if lock.is_file() else set()


def repro_killed_when(repo: Path, ready, log: Path, sig=signal.SIGKILL) -> str:
    """`dvc repro` in `repo`, sent `sig` (every process of it, as `kill -9` of a job is) as soon as `ready()`;
    returns what it printed."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["dvc", "repro"],
            cwd=repo,
            env=pipeline_env(repo),
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 600
    while not ready():
        assert process.poll() is None, f"dvc repro ended before the fault:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "the fault point never came"
        time.sleep(0.01)
    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    os.killpg(process.pid, sig)
    _, alive = psutil.wait_procs(family, timeout=120)
    assert not alive, f"still running 2 minutes after signal {sig}: {alive}"
    process.wait()
    return log.read_text()


def test_kill_9_in_every_stage_then_repro_ends_as_the_reference(reference, images, tmp_path):
    repo = new_repo(tmp_path / "repo", images)
    resume = repo / ".synthvit/resume"
    kill_points = [  # (stage, when its process is killed: mid-way, with its work partly on disk)
        ("generate_synthetic", lambda: any((repo / "data").glob(".synthetic.tmp-*"))),  # rendering, staged
        ("pretrain", lambda: any(resume.glob("pretrain-*.pt"))),  # an epoch's resume state saved
        ("finetune", lambda: any(resume.glob("finetune-*.pt"))),
        ("evaluate", lambda: (repo / "plots/evaluate/predictions.csv").exists()),  # its outputs half written
        ("visualize", lambda: any((repo / "plots/visualize").glob("*.png"))),
    ]
    logs = {}
    for stage, ready in kill_points:
        logs[stage] = repro_killed_when(repo, ready, tmp_path / f"{stage}.log")
        assert stage not in locked_stages(repo), f"{stage} finished before it was killed"
    # Each re-run took up where the last one was killed: the killed training stages resumed.
    assert "pretrain: resuming after epoch" in logs["finetune"]
    assert "finetune: resuming after epoch" in logs["evaluate"]

    output = dvc(repo, "repro")
    assert stages_run(output) == ["visualize"]
    assert {name: (repo / name).read_bytes() for name in OUTPUTS} == reference["outputs"]
    assert sorted(p.name for p in (repo / "plots/visualize").iterdir()) == sorted(
        p.name for p in (reference["repo"] / "plots/visualize").iterdir()
    )
    assert temporary_files(repo) == []
    assert list(resume.iterdir()) == []  # removed once each stage's outputs were written
    assert "Data and pipelines are up to date" in dvc(repo, "status")
    # MLflow: the runs each kill left RUNNING were ended KILLED by the stages that ran next.
    with sqlite3.connect(repo / "mlflow.db") as connection:
        statuses = dict(connection.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
    assert statuses == {"FINISHED": 1 + 5, "KILLED": 2 * len(kill_points)}  # parent and stages; per kill: both


def test_full_disk_at_the_final_checkpoint_then_repro_writes_it_without_training(reference, tmp_path):
    repo = copy_repo(reference["pretrained"], tmp_path / "repo")
    pretrained = (repo / "models/pretrain.pt").stat().st_size
    # models/ on a disk with room for pretrain.pt and not for finetune.pt beside it (same size give or take).
    with small_disk(repo / "models", pretrained + 8192) as models:
        result = run(repo, sys.executable, "-m", "synthvit.training.launch", "stages/finetune.py")
        (state,) = (repo / ".synthvit/resume").glob("finetune-*.pt")
        assert one_line_error(result) == (
            "error: finetune trained but could not write models/finetune.pt (the disk is full); free some space "
            "(or move the repository to a bigger disk), then `dvc repro` writes its outputs without training again "
            f"(the trained state is kept in .synthvit/resume/{state.name})"
        )
        assert sorted(p.name for p in models.iterdir()) == ["pretrain.pt"]  # no half-written checkpoint
        assert not (repo / "metrics/finetune.json").exists() and not (repo / "plots/finetune").exists()

        resize(models, 16 * 2**20)  # space freed
        output = dvc(repo, "repro", "finetune")
        assert f"finetune: resuming after epoch 3 from .synthvit/resume/{state.name}" in output
        assert "finetune epoch" not in output  # no epoch trained again
        for name in ("models/finetune.pt", "metrics/finetune.json", "plots/finetune/history.csv"):
            assert (repo / name).read_bytes() == reference["outputs"][name], name
        assert not state.exists() and temporary_files(repo) == []


def test_read_only_checkout_says_where_to_write(reference, tmp_path, capsys, monkeypatch):
    repo = copy_repo(reference["repo"], tmp_path / "repo")
    with read_only_view(repo, tmp_path / "read-only") as view:
        result = run(view, sys.executable, "stages/evaluate.py")
        assert one_line_error(result) == (
            f"error: evaluate cannot write its outputs in {view} (the file system is read-only); "
            "work in a writable clone of the repository (git clone)"
        )
        # Reading works where nothing needs writing: the comparison table, written elsewhere.
        compare = cli_in(view, capsys, monkeypatch, "compare", "--output-dir", str(tmp_path / "compare"))
        assert compare.returncode == 0, compare.stderr[-3000:]
        assert (tmp_path / "compare/comparison.csv").is_file()
        # A store that must be locked (by what may create one) names where to record instead.
        monkeypatch.chdir(view)
        with pytest.raises(UserError) as caught:
            store.open_client(store.tracking_uri())
        assert str(caught.value) == (
            f"cannot write the MLflow store {view}/mlflow.db (the file system is read-only creating "
            f"{view}/mlflow.db.lock); work in a writable clone of the repository (git clone), or record in a "
            "store you can write: MLFLOW_TRACKING_URI=sqlite:////tmp/mlflow/mlflow.db"
        )
        monkeypatch.chdir(tmp_path)  # out of the mount before it goes


def test_damaged_mlflow_db_names_the_way_out_everywhere(reference, images, tmp_path, capsys, monkeypatch):
    repo = copy_repo(reference["repo"], tmp_path / "repo")
    db = repo / "mlflow.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])  # cut short (a full disk, a copy interrupted)
    message = (
        f"error: the MLflow store {db} is damaged (database disk image is malformed); move it aside with "
        "`mv mlflow.db mlflow.db.damaged` and run again: the next stage creates a fresh, empty store (the runs "
        "recorded in the damaged one stay in that file), and DVC's outputs (models/, metrics/, plots/) are untouched"
    )
    assert one_line_error(run(repo, sys.executable, "stages/evaluate.py")) == message
    compare = cli_in(repo, capsys, monkeypatch, "compare", "--output-dir", str(tmp_path / "compare"))
    assert one_line_error(compare) == message
    image = str(next((images / "test/cat").iterdir()))
    predict = cli_in(repo, capsys, monkeypatch, "predict", image, "--model", "models:/synthvit-vit@current")
    assert one_line_error(predict) == message
    db.write_bytes(os.urandom(4096))  # overwritten with garbage
    monkeypatch.chdir(repo)
    with pytest.raises(UserError) as caught:
        store.use_store()
    assert f"error: {caught.value}" == message.replace("database disk image is malformed", "file is not a database")

    # The way out works: the stage runs on a fresh store; the damaged file and DVC's outputs are kept.
    before = {name: (repo / name).read_bytes() for name in OUTPUTS}
    db.rename(repo / "mlflow.db.damaged")
    result = run(repo, sys.executable, "stages/evaluate.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {name: (repo / name).read_bytes() for name in OUTPUTS} == before
    assert (repo / "mlflow.db.damaged").is_file()
    with sqlite3.connect(db) as connection:
        assert sorted(connection.execute("SELECT name, status FROM runs").fetchall()) == [
            ("evaluate", "FINISHED"),
            ("pretrained · manual", "FINISHED"),  # its parent: run outside DVC, the stage groups itself
        ]


def test_sigterm_during_evaluate_leaves_nothing_half_written(reference, tmp_path):
    repo = copy_repo(reference["repo"], tmp_path / "repo")
    shutil.rmtree(repo / "plots/evaluate")
    (repo / "metrics/evaluate.json").unlink()
    log = tmp_path / "evaluate.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "stages/evaluate.py"], cwd=repo, env=pipeline_env(repo), stdout=out, stderr=out
        )
    while not (repo / "plots/evaluate/predictions.csv").exists():  # mid-way through writing its outputs
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    assert log.read_text().strip().splitlines()[-1] == "terminated"
    assert temporary_files(repo) == []  # the atomic writers removed their partial files
    for path in (repo / "plots/evaluate").iterdir():  # what was written is whole
        assert path.read_bytes() == (reference["repo"] / "plots/evaluate" / path.name).read_bytes(), path.name
    with sqlite3.connect(repo / "mlflow.db") as connection:
        (status,) = connection.execute(
            "SELECT status FROM runs WHERE name = 'evaluate' ORDER BY start_time DESC LIMIT 1"
        ).fetchone()
    assert status == "KILLED"
    dvc(repo, "repro")  # DVC sees the stage's outputs incomplete and puts back the cached ones
    assert {name: (repo / name).read_bytes() for name in OUTPUTS} == reference["outputs"]


def test_a_file_name_that_is_not_utf8_survives_evaluate_and_visualize(reference, images):
    """The reference run's test split holds ODD_NAME: predictions.csv keeps its bytes, and the path read back
    opens the image."""
    from synthvit.files import read_csv

    odd = os.fsencode(images / "test/cat") + b"/" + ODD_NAME
    raw = (reference["repo"] / "plots/evaluate/predictions.csv").read_bytes()
    (line,) = [line for line in raw.splitlines() if ODD_NAME in line]
    assert line.split(b",")[1] == b"cat" and line.endswith(b"," + odd)  # its true class, and its name's bytes
    predictions = read_csv(reference["repo"] / "plots/evaluate/predictions.csv", text_columns=("path",))
    (path,) = [p for p in predictions["path"] if os.fsencode(p) == odd]
    assert Path(path).is_file()
    assert len(predictions) == 4 * 4 and (reference["repo"] / "plots/visualize/misclassified.png").is_file()

"""Faults on this machine, found in seconds: a disk that fills (a real tmpfs), a read-only folder, what a
process killed outright leaves behind, an outbox line cut off, file names that are not UTF-8.

The same faults inside the real pipeline are in test_pipeline_faults.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import pytest
import torch
from mlflow import MlflowClient

from helpers.commands import run_synthvit
from helpers.mounts import remount, small_disk
from helpers.repo import pipeline_env
from helpers.servers import free_port
from helpers.training import bright_vs_dark, plain_recipe
from synthvit.config import ModelConfig, RuntimeConfig
from synthvit.errors import Terminated, UserError, run_main
from synthvit.files import read_csv, write_csv, write_json
from synthvit.models import create_model, save_checkpoint
from synthvit.tracking import outbox, runs
from synthvit.tracking.store import HOST_TAG, PIPELINE_TAG
from synthvit.training.engine import train
from synthvit.training.resume import read_state

TINY = ModelConfig(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, drop_path_rate=0.0)
SYNTHVIT = str(Path(sys.executable).parent / "synthvit")


def big_checkpoint(path: Path) -> None:
    save_checkpoint(path, torch.nn.Linear(256, 256), TINY, ["a", "b"])  # ~260 kB


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# ---- a full disk, a read-only folder ----------------------------------------------------------------


@pytest.fixture
def own_sigterm():
    """run_main installs its SIGTERM handler; this process gets its own back afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_full_disk_names_the_output_not_torch_internals(tmp_path, capsys, own_sigterm):
    with small_disk(tmp_path / "disk", 64 * 1024) as disk:
        checkpoint = disk / "model.pt"
        write_json(disk / "kept.json", {"epoch": 1})
        # torch.save says "RuntimeError: [enforce fail at inline_container.cc] unexpected pos 576 vs 534".
        with pytest.raises(OSError) as caught:
            big_checkpoint(checkpoint)
        assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(checkpoint))
        frame = pd.DataFrame({"x": range(50_000)})
        with pytest.raises(OSError) as caught:
            write_csv(disk / "kept.json", frame)  # replacing a file: the old one stays whole
        assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(disk / "kept.json"))
        assert json.loads((disk / "kept.json").read_text()) == {"epoch": 1}
        assert sorted(p.name for p in disk.iterdir()) == ["kept.json"]  # no temporary file, no partial one

        with pytest.raises(SystemExit) as exit_info:
            run_main(lambda: big_checkpoint(checkpoint))
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == (
            f"error: the disk is full writing {checkpoint}: free some space (or move the repository to a bigger "
            "disk) and run it again\n"
        )


def test_a_read_only_folder_names_the_output(tmp_path):
    with small_disk(tmp_path / "disk", 64 * 1024) as disk:
        remount(disk, "ro")
        checkpoint = disk / "model.pt"
        with pytest.raises(OSError) as caught:  # torch: "open file failed with strerror: Read-only file system"
            big_checkpoint(checkpoint)
        assert (caught.value.errno, caught.value.filename) == (errno.EROFS, str(checkpoint))
        del caught
        remount(disk, "rw")


def test_a_disk_that_fills_during_training_keeps_the_last_state_and_says_so(tmp_path):
    data = bright_vs_dark(64)
    cfg = plain_recipe(epochs=3, batch_size=16, checkpoint_every=1)

    def run(resume_file: Path, epochs: int):
        torch.manual_seed(0)
        model = create_model(TINY, num_classes=2)
        config = cfg.model_copy(update={"epochs": epochs})
        return train(model, data, config, RuntimeConfig(device="cpu"), 0, desc="pretrain", resume_file=resume_file)

    sizing = tmp_path / "sizing.pt"
    run(sizing, 1)
    size = sizing.stat().st_size
    # Room for one state and not for the next one's temporary file beside it.
    with small_disk(tmp_path / "disk", int(size * 1.5)) as disk:
        state = disk / "pretrain-0123.pt"
        with pytest.raises(UserError) as caught:
            run(state, 3)
        assert str(caught.value) == (
            f"pretrain could not save its resume state after epoch 2 (the disk is full writing {state}); "
            "free some space (or move the repository to a bigger disk), then run `dvc repro` again: it resumes "
            "after epoch 1"
        )
        assert read_state(state)["epoch"] == 1 and leftovers(disk) == []


def fill(disk: Path) -> None:
    """Take every free byte of `disk`."""
    with open(disk / "filler", "wb") as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()


def test_an_mlflow_store_on_a_full_disk_is_one_line_naming_it(tmp_path, monkeypatch, capsys, own_sigterm):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setattr(runs, "pipeline_key", lambda: "dvc-1-1")
    with small_disk(tmp_path / "disk", 8 * 2**20) as disk:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{disk}/mlflow.db")
        with runs.stage_run("pretrain", {"lr": 0.1}, "synthvit") as run:  # the store as the stage before left it
            run.log_metrics({"loss": 1.0}, step=1)
        fill(disk)

        def finetune():
            with runs.stage_run("finetune", {"lr": 0.1}, "synthvit") as run:
                for epoch in range(1, 1000):  # SQLAlchemy: "(sqlite3.OperationalError) database or disk is full"
                    run.log_metrics({f"metric_{i}": float(epoch) for i in range(50)}, step=epoch)

        try:
            with pytest.raises(SystemExit) as exit_info:
                run_main(finetune)
        finally:
            mlflow.set_tracking_uri(None)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1] == (
            f"error: the disk is full writing {disk}/mlflow.db: free some space (or move the repository to a bigger "
            "disk) and run it again"
        )
        assert mlflow.active_run() is None


def test_sigterm_inside_a_c_extension_import_is_still_terminated(capsys, own_sigterm):
    """SIGTERM while matplotlib's Agg renderer initialises (evaluate's first figure) surfaced as
    "ImportError: initialization failed", a traceback and exit 1; it is what a C module's init makes of it."""

    def main():
        try:
            raise Terminated()  # what the handler raises inside the module's init
        except Terminated as exc:
            raise ImportError("initialization failed") from exc

    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "terminated\n"
    with pytest.raises(ImportError):  # an ImportError of its own is a bug, with its traceback
        run_main(lambda: __import__("no_such_module_here"))


def test_what_a_killed_writer_left_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has ended
    output = tmp_path / "metrics.json"
    (tmp_path / f".metrics.json.tmp-{dead_pid}").write_text('{"half": ')  # kill -9 mid-write
    (tmp_path / f".metrics.json.tmp-{os.getppid()}").write_text("{")  # a writer still running: not ours to remove
    (tmp_path / f".other.json.tmp-{dead_pid}").write_text("{")  # another output's: its own next write removes it
    write_json(output, {"top1": 0.5})
    assert json.loads(output.read_text()) == {"top1": 0.5}
    assert leftovers(tmp_path) == [f".metrics.json.tmp-{os.getppid()}", f".other.json.tmp-{dead_pid}"]


def test_runs_a_killed_execution_left_running_end_killed(store):
    uri, client, run_id = store
    experiment = client.get_run(run_id).info.experiment_id
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    me = psutil.Process()
    keys = {
        "killed": f"dvc-{int(dead.stdout)}-1700000000000",  # its DVC process is gone
        "running": f"dvc-{me.pid}-{int(me.create_time() * 1000)}",  # still runs
        "elsewhere": f"dvc-{int(dead.stdout)}-1700000000001",  # another machine's (a shared server)
    }
    parents = {}
    for name, key in keys.items():
        host = "another-machine" if name == "elsewhere" else socket.gethostname()
        parents[name] = client.create_run(experiment, tags={PIPELINE_TAG: key, HOST_TAG: host}).info.run_id
    stage = client.create_run(experiment, tags={"mlflow.parentRunId": parents["killed"]}).info.run_id

    runs.end_abandoned(client, experiment)
    status = {name: client.get_run(run).info.status for name, run in parents.items()}
    assert status == {"killed": "KILLED", "running": "RUNNING", "elsewhere": "RUNNING"}
    assert client.get_run(stage).info.status == "KILLED"
    assert client.get_run(run_id).info.status == "RUNNING"  # not a pipeline's parent: not ours to end


# ---- an outbox line cut off ---------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A real SQLite MLflow store in a fake repository (the working directory), with one run."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("synthvit"))
    yield uri, client, run.info.run_id
    mlflow.set_tracking_uri(None)


cli = run_synthvit


def test_sync_skips_cut_off_and_garbage_lines_keeps_them_and_uploads_the_rest(store, capsys):
    uri, client, run_id = store
    waiting = outbox.OutboxRun(uri, run_id)  # what a stage writes while the server is away
    waiting.store({"call": "log_batch", "run_id": run_id, "metrics": [["loss", 0.9, 1000, 1]]})
    waiting.store({"call": "log_batch", "run_id": run_id, "params": {"lr": "0.001"}})
    waiting.store({"call": "log_batch", "run_id": run_id, "metrics": [["loss", 0.5, 2000, 2]]})
    waiting.store({"call": "set_terminated", "run_id": run_id, "status": "FINISHED", "end_time": 3000})
    calls = waiting.folder / "calls.jsonl"
    lines = calls.read_bytes().splitlines(keepends=True)
    garbage, cut = b"\xff\xfe not a call\n", lines[3][:30]  # an edit gone wrong; kill -9 mid-append
    calls.write_bytes(lines[0] + garbage + lines[1] + lines[2] + cut)

    code, out, err = cli(capsys, "tracking", "sync")
    rejected = waiting.folder / "calls.rejected.jsonl"
    kept_aside = (
        f"error: 2 tracking call(s) not uploaded: 2 set aside as cut off or not a tracking call (2 in {rejected}): "
        "they cannot be uploaded; look at them, then delete them"
    )
    assert code == 2  # a script that syncs after a run can tell that not everything went
    assert err.splitlines() == [
        f"warning: {calls} line 2 is cut off or not a tracking call ('utf-8' codec can't decode byte 0xff in "
        f"position 0); skipped it, kept in {rejected}",
        f"warning: {calls} line 5 is cut off or not a tracking call (Unterminated string starting at); "
        f"skipped it, kept in {rejected}",
        kept_aside,
    ]
    assert out.strip() == (
        f"uploaded 3 tracking call(s) of run {run_id} to {uri}; skipped 2 unreadable line(s), kept in {rejected}"
    )
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.5)]
    assert client.get_run(run_id).data.params == {"lr": "0.001"}
    assert rejected.read_bytes() == garbage + cut + b"\n"
    assert sorted(p.name for p in waiting.folder.iterdir()) == ["calls.rejected.jsonl", "meta.json"]

    # Nothing is left to upload, and the lines set aside stay, named (a sync retried until it succeeds does not
    # hide them), until the user has looked at them and deleted them.
    code, out, err = cli(capsys, "tracking", "sync")
    assert (code, err.strip()) == (2, kept_aside) and out.startswith("nothing to upload")
    assert rejected.is_file()
    rejected.unlink()
    code, out, err = cli(capsys, "tracking", "sync")
    assert (code, err) == (0, "") and out.startswith("nothing to upload")


def test_sync_exits_non_zero_while_calls_wait_and_says_how_many_and_where(store, capsys):
    uri, client, run_id = store
    delivered = outbox.OutboxRun(uri, run_id)
    delivered.store({"call": "log_batch", "run_id": run_id, "params": {"lr": "0.001"}})
    # A run deleted on the server meanwhile: the server refuses its calls.
    experiment = client.get_experiment_by_name("synthvit").experiment_id
    deleted = client.create_run(experiment).info.run_id
    refused = outbox.OutboxRun(uri, deleted)
    for step in (1, 2):
        refused.store({"call": "log_batch", "run_id": deleted, "metrics": [["loss", 0.5, 1000, step]]})
    client.delete_run(deleted)
    # A server that is away (nothing listens on its port).
    away_uri = f"http://127.0.0.1:{free_port()}"
    away = outbox.OutboxRun(away_uri, "f" * 32)
    for step in (1, 2, 3):
        away.store({"call": "log_batch", "run_id": "f" * 32, "metrics": [["loss", 0.5, 1000, step]]})

    code, out, err = cli(capsys, "tracking", "sync")
    assert code == 2
    assert f"uploaded 1 tracking call(s) of run {run_id} to {uri}" in out
    assert client.get_run(run_id).data.params == {"lr": "0.001"}
    warnings, last = err.strip().splitlines()[:-1], err.strip().splitlines()[-1]
    assert len(warnings) == 2 and all(w.startswith("warning: ") for w in warnings)
    assert any(f"{refused.folder}" in w and "stopped" in w for w in warnings)
    assert (
        f"warning: MLflow tracking server {away_uri} does not answer (connection refused); "
        f"the calls of run {away.run_id} stay in {away.folder}"
    ) in warnings
    waiting = sorted([(refused.folder, 2), (away.folder, 3)])
    assert last == (
        "error: 5 tracking call(s) not uploaded: 5 still wait ("
        + ", ".join(f"{n} in {folder}" for folder, n in waiting)
        + "): see the warnings above, then run `synthvit tracking sync` again"
    )
    assert outbox.pending_calls(refused.folder) == 2 and outbox.pending_calls(away.folder) == 3  # kept for later


def test_sync_with_a_damaged_meta_file_says_what_to_write(store, capsys):
    uri, client, run_id = store
    waiting = outbox.OutboxRun(uri, run_id)
    waiting.store({"call": "log_batch", "run_id": run_id, "params": {"lr": "0.001"}})
    (waiting.folder / "meta.json").write_text('{"uri": "sqli')
    code, out, err = cli(capsys, "tracking", "sync")
    assert code == 2
    assert err.splitlines() == [
        f"warning: {waiting.folder}/meta.json is damaged (JSONDecodeError): which server run {run_id} belongs to "
        f'is unknown; skipped it. Write {{"uri": "<tracking URI>", "run_id": "{run_id}"}} into it and sync again, '
        "or remove the folder",
        f"error: 1 tracking call(s) not uploaded: 1 still wait (1 in {waiting.folder}): see the warnings above, "
        "then run `synthvit tracking sync` again",
    ]
    assert (waiting.folder / "calls.jsonl").is_file()  # kept for the next sync


# ---- file names that are not UTF-8 ----------------------------------------------------------------------


def test_predict_keeps_names_that_are_not_utf8_in_its_lines_and_tables(cifar10_root, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    jpg = sorted((cifar10_root / "test/cat").iterdir())[0].read_bytes()
    odd = os.fsencode(folder) + b"/\xff-cat.jpg"  # Latin-1 "ÿ", as an old camera or a zip file names it
    with open(odd, "wb") as image:
        image.write(jpg)
    (folder / "plain.jpg").write_bytes(jpg)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt", create_model(TINY, num_classes=2), TINY, ["cat", "dog"])
    model = str(tmp_path / "model.pt")
    # In its own process, on a terminal whose encoding refuses what is not UTF-8 (Python's default outside
    # the C locale): the lines name the file by its bytes.
    result = subprocess.run(
        [SYNTHVIT, "predict", str(folder), "--model", model, "--output", str(tmp_path / "table.csv")],
        capture_output=True,
        env={**pipeline_env(tmp_path), "PYTHONIOENCODING": "utf-8:strict"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split(b": ")[0] for line in lines] == [os.fsencode(folder / "plain.jpg"), odd]
    assert lines[1].split(b": ")[1] == lines[0].split(b": ")[1]  # the same image, the same answer
    assert odd in (tmp_path / "table.csv").read_bytes()  # the table too holds the name's bytes
    paths = read_csv(tmp_path / "table.csv", text_columns=("path",))["path"].tolist()
    assert [os.fsencode(p) for p in paths] == [os.fsencode(folder / "plain.jpg"), odd]

    # JSON: lines and table escape the name's lone surrogates (\udcff), which json.loads and os.fsencode undo.
    table = str(tmp_path / "table.json")
    code, out, err = cli(capsys, "predict", str(folder), "--model", model, "--output", table, "--json")
    assert code == 0, err
    assert [os.fsencode(json.loads(line)["path"]) for line in out.splitlines()] == [
        os.fsencode(folder / "plain.jpg"),
        odd,
    ]
    entries = json.loads((tmp_path / "table.json").read_text())
    assert [os.fsencode(e["path"]) for e in entries] == [os.fsencode(folder / "plain.jpg"), odd]
    assert all(Path(e["path"]).is_file() for e in entries)  # each name read back opens the file

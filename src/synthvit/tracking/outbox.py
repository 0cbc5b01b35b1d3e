"""Tracking that outlives a server outage: what the server cannot take waits in a local outbox.

A stage logs through an `OutboxRun` (what `runs.stage_run` yields). Each call goes to
MLflow at once. When one fails and the store does not answer (tracking_check), the call
is written to the run's outbox instead, `.synthvit/outbox/<run id>/` under the
repository root: `calls.jsonl`, one JSON line per call with its original timestamps,
and copies of the files it uploads. Training carries on and writes its DVC outputs as
usual; later calls go straight to the outbox until the server answers again (asked at
most every RETRY_S seconds), and then the outbox is replayed, in order, before the next
call. At the end of the stage it is replayed once more; what the server still cannot
take stays on disk, and `synthvit tracking sync` uploads it later.

A line that is not a whole call (cut off by a kill -9 mid-append or a full disk, or
edited into garbage) would fail every replay the same way: it is skipped with a warning
naming the file and line, kept in `calls.rejected.jsonl` beside it, and the rest goes up.
`synthvit tracking sync` exits non-zero while any call waits or lies set aside, so a script can tell.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from synthvit.errors import UserError
from synthvit.files import repo_root, write_text
from synthvit.tracking import health
from synthvit.tracking.registry import log_model

RETRY_S = 10.0  # while the server is away, ask again at most this often (a probe costs up to CHECK_TIMEOUT_S)
CALLS = "calls.jsonl"
REJECTED = "calls.rejected.jsonl"  # lines that are not a whole call, kept for the user to look at
KNOWN_CALLS = {"log_batch", "log_artifact", "log_dict", "log_table", "set_terminated", "log_model"}
SENT = "sent"  # how many lines of calls.jsonl reached the server: a replay cut short resumes after them
META = "meta.json"
MODEL_ARGS = ("registered_model", "alias", "score", "heldout", "arm", "model_summary")  # registry.log_model's


def outbox_root() -> Path:
    return repo_root() / ".synthvit" / "outbox"


class OutboxRun:
    """The calls stages make on an MLflow run, safe against the server going away:
    log_metrics/log_metric/log_params/log_artifact/log_dict/log_table and log_synthvit_model."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self.client = MlflowClient(uri, registry_uri=uri)
        self.folder = outbox_root() / run_id
        self.last_probe = 0.0
        self.model = None  # the model of log_synthvit_model, for its replay in this process

    # ---- the logging calls ------------------------------------------------------------

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        stamp = int(time.time() * 1000)
        points = [[key, float(value), stamp, step or 0] for key, value in metrics.items()]
        self.send({"call": "log_batch", "run_id": self.run_id, "metrics": points})

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step)

    def log_params(self, params: dict) -> None:
        self.send({"call": "log_batch", "run_id": self.run_id, "params": {k: str(v) for k, v in params.items()}})

    def log_artifact(self, local_path, artifact_path: str | None = None) -> None:
        self.send(
            {"call": "log_artifact", "run_id": self.run_id, "file": str(local_path), "artifact_path": artifact_path}
        )

    def log_dict(self, dictionary: dict, artifact_file: str) -> None:
        self.send({"call": "log_dict", "run_id": self.run_id, "data": dictionary, "artifact_file": artifact_file})

    def log_table(self, data, artifact_file: str) -> None:
        columns = pd.DataFrame(data).to_dict(orient="list")  # JSON for the outbox; MlflowClient.log_table takes it
        self.send({"call": "log_table", "run_id": self.run_id, "data": columns, "artifact_file": artifact_file})

    def log_synthvit_model(self, model, checkpoint, input_example: np.ndarray | None = None, **about) -> None:
        """registry.log_model (`about`: registered_model, alias, score, heldout, arm, model_summary); in an outage
        the checkpoint waits in the outbox, and `synthvit tracking sync` logs the model from it later."""
        self.model = model
        example = None if input_example is None else input_example.tolist()
        self.send({"call": "log_model", "run_id": self.run_id, "file": str(checkpoint), **about, "example": example})

    def end(self, status: str, parent_id: str) -> None:
        """Terminate this run (the active one) and its pipeline's parent, then replay what waits; warn (one line)
        about what is left."""
        end_time = int(time.time() * 1000)
        try:
            with health.quick_http():  # pops the active run even when the server does not answer
                mlflow.end_run(status)
        except Exception:  # noqa: BLE001 - the outbox records the status
            self.store({"call": "set_terminated", "run_id": self.run_id, "status": status, "end_time": end_time})
        self.send({"call": "set_terminated", "run_id": parent_id, "status": status, "end_time": end_time})
        if self.catch_up(force=True):
            print(
                f"warning: MLflow tracking server {health.redact(self.uri)} is not answering: "
                f"{self.pending()} tracking call(s) of this stage wait in {self.folder}; "
                "upload them with `synthvit tracking sync` once it is back",
                file=sys.stderr,
            )

    # ---- delivery ---------------------------------------------------------------------

    def send(self, entry: dict) -> None:
        """Deliver now, or keep in the outbox: after earlier calls that wait, or when the server is away."""
        if self.catch_up():
            self.store(entry)
            return
        try:
            apply(self.client, entry, Path.cwd(), lambda _: self.model)
        except Exception as exc:
            if not self.server_away():
                raise  # the server answers: a real error, not an outage
            print(
                f"warning: MLflow tracking server {health.redact(self.uri)} stopped answering "
                f"({type(exc).__name__}); tracking calls wait in {self.folder} until it is back; training goes on",
                file=sys.stderr,
            )
            self.store(entry)

    def server_away(self) -> bool:
        self.last_probe = time.monotonic()
        return health.store_problem(self.uri) is not None

    def catch_up(self, force: bool = False) -> int:
        """Replay the waiting calls if the server is back (asked at most every RETRY_S unless `force`);
        returns how many still wait."""
        if self.pending() and (force or time.monotonic() - self.last_probe >= RETRY_S) and not self.server_away():
            try:
                sent, _ = replay(self.client, self.folder, lambda _: self.model)
            except Exception:
                if not self.server_away():
                    raise  # stops, keeping the rest, only if the server went away again
            else:
                back = f"MLflow tracking server {health.redact(self.uri)} is back"
                print(f"{back}: {sent} waiting tracking call(s) uploaded", file=sys.stderr)
        return self.pending()

    def pending(self) -> int:
        return pending_calls(self.folder)

    def store(self, entry: dict) -> None:
        """Append one call to the outbox; the files it names are copied in (they may change or go later)."""
        if not (self.folder / META).is_file():
            write_text(self.folder / META, json.dumps({"uri": self.uri, "run_id": self.run_id}) + "\n")
        if "file" in entry:
            copy = self.folder / "files" / str(line_count(self.folder / CALLS)) / Path(entry["file"]).name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(entry["file"], copy)
            entry = {**entry, "file": str(copy.relative_to(self.folder))}
        with open(self.folder / CALLS, "a") as calls:
            calls.write(json.dumps(entry) + "\n")


def line_count(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as lines:  # bytes: a damaged line need not be text
        return sum(1 for _ in lines)


def sent_count(folder: Path) -> int:
    return int((folder / SENT).read_text()) if (folder / SENT).is_file() else 0


def pending_calls(folder: Path) -> int:
    return line_count(folder / CALLS) - sent_count(folder)


def apply(client, entry: dict, base: Path, load_model) -> None:
    """Make one recorded call on `client`; file names are relative to `base`. `load_model(checkpoint)`: the
    model a log_model call logs (models.py builds it from the checkpoint; tracking does not import models)."""
    call, run_id = entry["call"], entry["run_id"]
    if call == "log_batch":
        metrics = [Metric(key, value, stamp, step) for key, value, stamp, step in entry.get("metrics", [])]
        params = [Param(key, value) for key, value in entry.get("params", {}).items()]
        client.log_batch(run_id, metrics=metrics, params=params, synchronous=True)
    elif call == "log_artifact":
        client.log_artifact(run_id, str(base / entry["file"]), entry["artifact_path"])
    elif call == "set_terminated":
        client.set_terminated(run_id, entry["status"], entry["end_time"])
    elif call == "log_model":
        log_model_into(client, entry, base / entry["file"], load_model)
    else:  # log_dict, log_table: MlflowClient takes the data as recorded
        getattr(client, call)(run_id, entry["data"], entry["artifact_file"])


def log_model_into(client, entry: dict, checkpoint: Path, load_model) -> None:
    """registry.log_model on the entry's run: the active run, or reopened for the upload (a replay)."""
    run_id, example = entry["run_id"], entry.get("example")
    args = {key: entry[key] for key in MODEL_ARGS if key in entry}
    args["input_example"] = None if example is None else np.asarray(example, dtype=np.float32)
    model = load_model(checkpoint)
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client.tracking_uri)
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        log_model(model, checkpoint, **args)
        return
    status = client.get_run(run_id).info.status
    with mlflow.start_run(run_id=run_id):
        log_model(model, checkpoint, **args)
    client.set_terminated(run_id, status)  # reopening set it RUNNING; a later set_terminated call may follow


def parse_call(line: bytes) -> dict:
    """One outbox line as the call it records; ValueError when it is not a whole one."""
    entry = json.loads(line.decode("utf-8"))  # UnicodeDecodeError and JSONDecodeError are ValueErrors
    if not isinstance(entry, dict) or entry.get("call") not in KNOWN_CALLS or not isinstance(entry.get("run_id"), str):
        raise ValueError("not a tracking call")
    return entry


def reject(folder: Path, number: int, line: bytes, exc: ValueError) -> None:
    """Keep a line that is not a whole call in REJECTED (before it counts as handled), with a warning."""
    with open(folder / REJECTED, "ab") as rejected:
        rejected.write(line if line.endswith(b"\n") else line + b"\n")
        rejected.flush()
        os.fsync(rejected.fileno())
    reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(":")[0]
    print(
        f"warning: {folder / CALLS} line {number + 1} is cut off or not a tracking call ({reason}); "
        f"skipped it, kept in {folder / REJECTED}",
        file=sys.stderr,
    )


def replay(client, folder: Path, load_model) -> tuple[int, int]:
    """Send the outbox's waiting calls in order, counting each one handled; lines that are not a whole
    call are skipped (kept in REJECTED). Once all are handled the folder goes, or, when some were
    rejected, all but the rejected lines and meta.json (which server and run they belong to).
    Returns (calls sent, lines rejected)."""
    done = rejected = 0
    with open(folder / CALLS, "rb") as calls:
        sent = sent_count(folder)
        for number, line in enumerate(itertools.islice(calls, sent, None), start=sent):
            try:
                entry = parse_call(line)
            except ValueError as exc:
                reject(folder, number, line, exc)
                rejected += 1
            else:
                apply(client, entry, folder, load_model)
                done += 1
            write_text(folder / SENT, str(number + 1))
    if (folder / REJECTED).is_file():
        for name in (CALLS, SENT):
            (folder / name).unlink(missing_ok=True)
        shutil.rmtree(folder / "files", ignore_errors=True)
    else:
        shutil.rmtree(folder)
    return done, rejected


def sync(load_model, root: Path | None = None) -> None:
    """`synthvit tracking sync`: upload every outbox under the repository to its server (`load_model(checkpoint)`
    rebuilds the model a log_model call logs).
    Raises UserError, one line saying how many calls did not go and where they are kept, while any wait
    (server away or refusing, meta.json damaged) or lie set aside (cut off or not a call): exit 0 means all went."""
    root = root or outbox_root()
    folders = sorted(p for p in root.glob("*") if (p / META).is_file()) if root.is_dir() else []
    waiting = [p for p in folders if (p / CALLS).is_file()]
    if not waiting:
        print(f"nothing to upload: no tracking calls wait in {root}")
    left = {}
    for folder in waiting:  # one folder's problem leaves the others to go
        kept = upload(folder, load_model)
        if kept:
            print(f"warning: {kept}", file=sys.stderr)
            left[folder] = pending_calls(folder)
    # Lines set aside by this sync or an earlier one (or a stage's own replay) never reach a server: they
    # count until the user has looked at them, so a sync retried until it succeeds does not hide them.
    aside = {p / REJECTED: line_count(p / REJECTED) for p in folders if (p / REJECTED).is_file()}
    if left or aside:
        raise UserError(not_uploaded(left, aside))


def upload(folder: Path, load_model) -> str | None:
    """Replay one run's outbox to the server its meta.json names; returns why (some of) it stays, or None."""
    try:
        uri = json.loads((folder / META).read_text())["uri"]
    except (ValueError, KeyError, TypeError) as exc:
        return (
            f"{folder / META} is damaged ({type(exc).__name__}): which server run {folder.name} belongs "
            f'to is unknown; skipped it. Write {{"uri": "<tracking URI>", "run_id": "{folder.name}"}} '
            "into it and sync again, or remove the folder"
        )
    problem = health.store_problem(uri)
    if problem:  # a stage's way out (unset MLFLOW_TRACKING_URI) cannot move calls bound to this server
        return f"{problem.removesuffix(f': {health.WAY_OUT}')}; the calls of run {folder.name} stay in {folder}"
    try:
        sent, rejected = replay(MlflowClient(uri, registry_uri=uri), folder, load_model)
    except Exception as exc:  # noqa: BLE001 - one line, the rest stays for the next sync
        reason = str(exc).splitlines()[0][:300] if str(exc) else ""
        return (
            f"uploading {folder} to {health.redact(uri)} stopped ({type(exc).__name__}: {reason}); "
            "what is left stays there"
        )
    print(
        f"uploaded {sent} tracking call(s) of run {folder.name} to {health.redact(uri)}"
        + (f"; skipped {rejected} unreadable line(s), kept in {folder / REJECTED}" if rejected else "")
    )
    return None


def not_uploaded(left: dict[Path, int], aside: dict[Path, int]) -> str:
    """How many tracking calls did not go and where they are, in one line."""
    parts = []
    if left:
        where = ", ".join(f"{count} in {folder}" for folder, count in left.items())
        then = "see the warnings above, then run `synthvit tracking sync` again"
        parts.append(f"{sum(left.values())} still wait ({where}): {then}")
    if aside:
        where = ", ".join(f"{count} in {path}" for path, count in aside.items())
        parts.append(
            f"{sum(aside.values())} set aside as cut off or not a tracking call ({where}): "
            "they cannot be uploaded; look at them, then delete them"
        )
    return f"{sum(left.values()) + sum(aside.values())} tracking call(s) not uploaded: " + "; ".join(parts)

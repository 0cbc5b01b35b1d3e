"""Where MLflow records: the tracking store, its lock, its client and the experiment.

Store: `MLFLOW_TRACKING_URI` when set (e.g. a team server), else SQLite at
`<repo root>/mlflow.db` with artifacts in `<repo root>/mlartifacts`. The repo root
comes from `DVC_ROOT`, which DVC points at the real repository even when a queued
experiment runs in a temporary copy that is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow import MlflowClient

from synthvit.errors import DISK_ERRORS, UserError
from synthvit.files import repo_root
from synthvit.tracking import summary

PIPELINE_TAG = "synthvit.pipeline"  # on a parent run: the key of the pipeline execution it groups
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own; the UI links it to the source
HOST_TAG = "synthvit.host"  # on a parent run: the machine its DVC process runs on
ERROR_TAG = "synthvit.error"  # on a run that failed before it could log: the one-line error


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def use_store(create: bool = True, missing: str = "") -> str:
    """Point MLflow's tracking and registry at the store (models register beside their runs,
    whatever was set before) and return its URI.

    create=False: a SQLite store that does not exist is a UserError, "`missing`: there is no
    MLflow store at PATH; `fix`" (opening it would create an empty one), where `missing` is
    "what failed; the fix" split on the first ";".
    """
    uri = tracking_uri()
    db = sqlite_path(uri)
    if not create and db is not None and not db.is_file():
        what, _, fix = missing.partition("; ")
        raise UserError(f"{what}: there is no MLflow store at {db}; {fix}")
    check_intact(db)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def sqlite_path(uri: str) -> Path | None:
    # sqlite:///relative.db and sqlite:////absolute/path.db
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


_intact: set = set()  # stores found intact in this process: (path, size, mtime)


def check_intact(db: Path | None) -> None:
    """One line, naming the way out, for a local SQLite store that is not a whole database (cut short
    by a full disk or a copy, overwritten): MLflow's own error is a page of SQLAlchemy traceback, and a
    store damaged deep inside would only fail once a stage has trained and logs its results.
    Reads the file (SQLite's quick_check: well under a second for a store of tens of MB); an empty or
    missing file is a store MLflow creates."""
    if db is None or not db.is_file():
        return
    stat = db.stat()
    key = (str(db.resolve()), stat.st_size, stat.st_mtime_ns)
    if stat.st_size == 0 or key in _intact:
        return
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=60)) as connection:
            problems = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall() if row[0] != "ok"]
    except sqlite3.DatabaseError as exc:
        # SQLITE_NOTADB "file is not a database", SQLITE_CORRUPT "database disk image is malformed"
        if not any(words in str(exc) for words in ("not a database", "malformed", "corrupt")):
            return  # locked, or not readable here: MLflow says what it says
        problems = [str(exc)]
    if problems:
        place = db  # as the user types it: relative to the working directory when it is inside it
        with contextlib.suppress(ValueError):
            place = db.resolve().relative_to(Path.cwd().resolve())
        raise UserError(
            f"the MLflow store {db} is damaged ({problems[0][:200]}); move it aside with "
            f"`mv {place} {place}.damaged` and run again: the next stage creates a fresh, empty store "
            "(the runs recorded in the damaged one stay in that file), and DVC's outputs (models/, metrics/, "
            "plots/) are untouched"
        )
    _intact.add(key)


# MLflow logs each SQLAlchemy OperationalError it re-raises ("SQLAlchemy database error. The following
# exception is caught.", a page of traceback) before raising it again with the same message; what is
# raised is reported once: as one line (a full disk, `refused_store_write`), or as the error it is.
logging.getLogger("mlflow.store.db.utils").addFilter(
    lambda record: not str(record.msg).startswith("SQLAlchemy database error")
)

# What SQLite (through SQLAlchemy and MLflow) says when a write is refused.
REFUSED_BY_SQLITE = {"database or disk is full": errno.ENOSPC, "attempt to write a readonly database": errno.EROFS}


def refused_store_write(uri: str, exc: BaseException) -> OSError | None:
    """A write to a local SQLite store that the machine refused, as an OSError naming the file; None otherwise."""
    db = sqlite_path(uri)
    code = next((code for words, code in REFUSED_BY_SQLITE.items() if words in str(exc)), None)
    if db is None or code is None:
        return None
    return OSError(code, os.strerror(code), str(db))


@contextlib.contextmanager
def store_lock(uri: str):
    """Serialise store creation: parallel first use of a fresh SQLite store corrupts it.
    A folder where the lock cannot be created (a read-only checkout) is one line saying where to write."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    lock = FileLock(str(db) + ".lock", timeout=600)
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        acquired = lock.acquire()  # released when the `with` below ends
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise UserError(
            f"cannot write the MLflow store {db} ({DISK_ERRORS[exc.errno]} creating {lock.lock_file}); "
            "work in a writable clone of the repository (git clone), or record in a store you can write: "
            "MLFLOW_TRACKING_URI=sqlite:////tmp/mlflow/mlflow.db"
        ) from None
    with acquired:
        yield


def open_client(uri: str):
    """An MlflowClient on a store that exists: the first one to open a fresh store creates it, under the lock."""
    check_intact(sqlite_path(uri))
    with store_lock(uri):
        client = MlflowClient(uri, registry_uri=uri)  # opening a SQLite store creates and migrates it
        client.search_experiments(max_results=1)
    return client


def get_experiment_id(client, uri: str, name: str) -> str:
    """The experiment's id, created once (under the lock); artifacts sit beside a SQLite DB."""
    with store_lock(uri):
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            db = sqlite_path(uri)
            location = (db.parent / "mlartifacts").resolve().as_uri() if db else None
            experiment = client.get_experiment(client.create_experiment(name, artifact_location=location))
        summary.tag_experiment(client, experiment)  # what MLflow's UI opens on
        return experiment.experiment_id

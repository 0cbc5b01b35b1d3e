"""Where MLflow records: the tracking store, its lock, its client and the experiment.

Store: `MLFLOW_TRACKING_URI` when set (e.g. a team server), else SQLite at
`<repo root>/mlflow.db` with artifacts in `<repo root>/mlartifacts`. The repo root
comes from `DVC_ROOT`, which DVC points at the real repository even when a queued
experiment runs in a temporary copy that is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow import MlflowClient

from synthvit.errors import UserError
from synthvit.files import repo_root
from synthvit.tracking import summary

PIPELINE_TAG = "synthvit.pipeline"  # on a parent run: the key of the pipeline execution it groups
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own; the UI links it to the source
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
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    # sqlite:///relative.db and sqlite:////absolute/path.db
    return Path(uri[len("sqlite:///") :])


@contextlib.contextmanager
def store_lock(uri: str):
    """Serialise store creation: parallel first use of a fresh SQLite store corrupts it."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=600):
        yield


def open_client(uri: str):
    """An MlflowClient on a store that exists: the first one to open a fresh store creates it, under the lock."""
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

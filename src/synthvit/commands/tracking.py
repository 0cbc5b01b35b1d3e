"""`synthvit tracking check|sync`: the MLflow tracking store (MLFLOW_TRACKING_URI, else mlflow.db)."""

from __future__ import annotations

from synthvit.models import load_checkpoint, model_from_checkpoint
from synthvit.tracking import health, outbox
from synthvit.tracking.store import sqlite_path, tracking_uri


def check(args) -> int:
    """Does the MLflow store (MLFLOW_TRACKING_URI) answer within seconds and let you in? One line either way."""
    uri = tracking_uri()
    if sqlite_path(uri) is not None:
        print(f"MLflow tracking store {uri} is a local SQLite file: nothing to check")
        return 0
    health.check_tracking_store(uri)
    print(f"MLflow tracking store {health.redact(uri)} answers")
    return 0


def sync(args) -> int:
    """Upload the tracking calls kept in .synthvit/outbox while the server was away; exit 0 only when all went."""
    outbox.sync(lambda checkpoint: model_from_checkpoint(load_checkpoint(checkpoint)))
    return 0

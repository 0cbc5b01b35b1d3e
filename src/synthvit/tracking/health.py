"""Is the MLflow tracking store there, and does it let this user in? Asked before a stage does any work.

A team server that is down, or that refuses this user's credentials, is found in one
request of at most CHECK_TIMEOUT_S seconds, and the stage stops with one line naming the
URI and the way out, instead of MLflow's default of 7 retries with backoff (about four
minutes) and a traceback. The same probe tells a transient outage from a real error
while a run is logging (see outbox.py).
"""

from __future__ import annotations

import contextlib
import os
import threading
from urllib.parse import urlsplit, urlunsplit

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from synthvit.errors import UserError
from synthvit.tracking.store import sqlite_path, tracking_uri

CHECK_TIMEOUT_S = 5.0
# A database URI: MLflow connects and may create its schema on first use, which takes longer.
DATABASE_CHECK_TIMEOUT_S = 30.0

# MLflow's own retries for the calls made during a run: enough to ride out a blip, short
# enough that a server gone away is noticed in seconds and the outbox takes over. A user's
# own setting of any of these wins.
SHORT_HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def shorten_http_retries() -> None:
    for name, value in SHORT_HTTP_RETRIES.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def quick_http():
    """MLflow calls inside make one attempt of at most CHECK_TIMEOUT_S seconds (for a call that must not wait)."""
    saved = {name: os.environ.get(name) for name in SHORT_HTTP_RETRIES}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(int(CHECK_TIMEOUT_S)))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"  # the cheapest request that needs a login
WAY_OUT = "start the server, or unset MLFLOW_TRACKING_URI to record in the local SQLite store (mlflow.db)"


def check_tracking_store(uri: str | None = None) -> None:
    """Raise UserError (one line) unless the tracking store at `uri` answers within seconds
    and accepts this user's credentials."""
    problem = store_problem(uri or tracking_uri())
    if problem:
        raise UserError(problem)


def store_problem(uri: str) -> str | None:
    """What keeps the store from answering, as one line; None when it answers. A local SQLite store needs no check."""
    if sqlite_path(uri) is not None:
        return None
    if uri.startswith(("http://", "https://")):
        return http_problem(uri, CHECK_TIMEOUT_S)
    return database_problem(uri, DATABASE_CHECK_TIMEOUT_S)


def http_problem(uri: str, timeout: float) -> str | None:
    """One request, no retries, as MLflow sends it (MLFLOW_TRACKING_USERNAME/PASSWORD or TOKEN, TLS settings)."""
    creds = get_default_host_creds(uri)
    shown = redact(uri)
    try:
        response = http_request(creds, SEARCH, "GET", max_retries=0, timeout=timeout, raise_on_status=False)
    except MlflowException as exc:  # http_request's wrapping of what requests raised
        return f"MLflow tracking server {shown} does not answer ({connection_reason(exc, timeout)}): {WAY_OUT}"
    user = creds.username
    if response.status_code == 401:
        if not user:
            return (
                f"MLflow tracking server {shown} requires a login (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to your account on it (its admin creates accounts)"
            )
        return (
            f"MLflow tracking server {shown} refused user {user!r} (HTTP 401: wrong password or unknown user): "
            "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if response.status_code == 403:
        return (
            f"MLflow tracking server {shown} does not let user {user!r} read experiments (HTTP 403): "
            "ask its admin for access"
        )
    if response.status_code != 200:
        return (
            f"MLflow tracking server {shown} answered HTTP {response.status_code} {response.reason}: "
            "is MLFLOW_TRACKING_URI the address of a healthy MLflow server?"
        )
    return None


def connection_reason(exc: Exception, timeout: float) -> str:
    text = str(exc)
    if "timed out" in text:  # requests' ConnectTimeout, or a ReadTimeout that urllib3's Retry made a ConnectionError
        return f"no reply within {timeout:g} s"
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "NameResolution" in text or "nodename nor servname" in text:
        return "unknown host name"
    return f"cannot connect: {type(exc.__context__ or exc).__name__}"


def database_problem(uri: str, timeout: float) -> str | None:
    """A database URI (postgresql://...) opened by MLflow itself, in a thread we stop waiting for after `timeout`."""
    outcome: dict = {}

    def ask() -> None:
        try:
            MlflowClient(uri).search_experiments(max_results=1)
            outcome["ok"] = True
        except Exception as exc:  # noqa: BLE001 - any failure is reported as one line below
            outcome["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    thread = threading.Thread(target=ask, daemon=True)  # a hung connect must not keep the process alive
    thread.start()
    thread.join(timeout)
    if outcome.get("ok"):
        return None
    reason = outcome.get("error", f"no reply within {timeout:g} s")
    return f"MLflow tracking store {redact(uri)} does not answer ({reason[:300]}): {WAY_OUT}"


def redact(uri: str) -> str:
    """The URI without a password, fit for a message."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))

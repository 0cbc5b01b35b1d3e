"""MLflow tracking: one run per stage, grouped under one parent run per pipeline execution.

Store: `MLFLOW_TRACKING_URI` when set (e.g. a team server), else SQLite at
`<repo root>/mlflow.db` with artifacts in `<repo root>/mlartifacts`. The repo root
comes from `DVC_ROOT`, which DVC points at the real repository even when a queued
experiment runs in a temporary copy that is deleted afterwards.

Grouping: DVC runs each stage as its own process, so stages find their parent run by a
key: the DVC process that launched them (pid and start time), which is the same for
every stage of one `dvc repro` / `dvc exp run` and differs between executions.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import psutil

from synthvit.files import repo_root

PIPELINE_TAG = "synthvit.pipeline"
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own; the UI links it to the source
ERROR_TAG = "synthvit.error"
_stage_run_opened = False  # set once this process's stage run exists: from then on it records how the stage ends


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def use_store(create: bool = True, missing: str = "") -> str:
    """Point MLflow's tracking and registry at the store (models register beside their runs,
    whatever was set before) and return its URI.

    create=False: a SQLite store that does not exist is a UserError, "`missing`: there is no
    MLflow store at PATH; `fix`" (opening it would create an empty one), where `missing` is
    "what failed; the fix" split on the first ";".
    """
    import mlflow

    uri = tracking_uri()
    db = sqlite_path(uri)
    if not create and db is not None and not db.is_file():
        from synthvit.errors import UserError

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
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=600):
        yield


def open_client(uri: str):
    """An MlflowClient on a store that exists: the first one to open a fresh store creates it, under the lock."""
    from mlflow import MlflowClient

    with store_lock(uri):
        client = MlflowClient(uri, registry_uri=uri)  # opening a SQLite store creates and migrates it
        client.search_experiments(max_results=1)
    return client


def get_experiment_id(client, uri: str, name: str) -> str:
    """The experiment's id, created once (under the lock); artifacts sit beside a SQLite DB."""
    from synthvit import execution_summary

    with store_lock(uri):
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            db = sqlite_path(uri)
            location = (db.parent / "mlartifacts").resolve().as_uri() if db else None
            experiment = client.get_experiment(client.create_experiment(name, artifact_location=location))
        execution_summary.tag_experiment(client, experiment)  # what MLflow's UI opens on
        return experiment.experiment_id


def launching_dvc_process() -> psutil.Process | None:
    """The nearest ancestor process that is DVC (`dvc repro`, `dvc exp run`, a queue worker)."""
    try:
        for process in psutil.Process().parents():
            # `dvc ...`, `python /venv/bin/dvc ...` or `python -m dvc ...`
            if any(Path(arg).name == "dvc" for arg in process.cmdline()[:3]):
                return process
    except (psutil.Error, OSError):
        return None
    return None


def pipeline_key() -> str:
    dvc = launching_dvc_process()
    if dvc is None:
        return f"manual-{uuid.uuid4().hex[:12]}"
    return f"dvc-{dvc.pid}-{int(dvc.create_time() * 1000)}"


def run_tags(stage: str) -> dict:
    tags = {
        "dvc.stage": os.environ.get("DVC_STAGE", stage),
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
        "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
    }
    from mlflow.utils.git_utils import get_git_commit

    # mlflow.start_run sets this tag itself (from the script's git repository); runs made with
    # MlflowClient.create_run (the parent, a failure record) get it from MLflow's same helper.
    commit = get_git_commit(str(Path.cwd()))
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    return tags


def find_or_create_parent(client, experiment_id: str, key: str, tags: dict) -> str:
    found = client.search_runs([experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'", max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    name = os.environ.get("DVC_EXP_NAME") or ("manual" if key.startswith("manual") else "dvc repro")
    parent_tags = {k: v for k, v in tags.items() if k != "dvc.stage"}
    parent = client.create_run(experiment_id, run_name=f"pipeline {name}", tags={**parent_tags, PIPELINE_TAG: key})
    return parent.info.run_id


@contextlib.contextmanager
def stage_run(stage: str, params: dict, experiment_name: str):
    """An MLflow run for one stage, nested under its pipeline's parent run.

    Yields an `outbox.OutboxRun`: the `mlflow` module's logging calls on the active run,
    kept in a local outbox while the server is away (see outbox.py). The stage run and
    its parent end FINISHED, FAILED when the stage raises, KILLED on Ctrl-C or SIGTERM.
    """
    import mlflow

    from synthvit import distributed, tracking_check
    from synthvit.outbox import OutboxRun

    global _stage_run_opened

    if not distributed.is_main():  # under torchrun, process 0 records the run
        yield distributed.Silent()
        return
    _stage_run_opened = True
    tracking_check.shorten_http_retries()
    uri = use_store()
    client = open_client(uri)
    experiment_id = get_experiment_id(client, uri, experiment_name)
    tags = run_tags(stage)
    parent_id = find_or_create_parent(client, experiment_id, pipeline_key(), tags)
    run = OutboxRun(uri, mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent_id,
                                          tags=tags).info.run_id)
    status = "FAILED"
    try:
        run.log_params(params)
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:  # also SIGTERM (runner.Terminated)
        status = "KILLED"
        raise
    finally:
        run.end(status, parent_id)
    if not run.pending():  # finished, and its metrics are on the server to summarise
        record_on_parent(client, parent_id, stage, run.run_id)


def record_on_parent(client, parent_id: str, stage: str, run_id: str) -> None:
    """The execution's params and headline metrics on its parent run (execution_summary); never fails the stage."""
    from synthvit import execution_summary

    try:
        execution_summary.record_stage(client, parent_id, stage, run_id)
    except Exception as exc:  # noqa: BLE001 - the stage's outputs are written; the summary is a convenience
        import sys

        print(f"warning: could not record {stage}'s headline on the pipeline run: {exc}", file=sys.stderr)


def record_early_failure(error: BaseException) -> None:
    """Fail the pipeline's parent run when a DVC stage fails before its own run opened.

    Stages load data and build models before `stage_run` (e.g. ImageNet weights that
    cannot be fetched): without this the parent keeps the FINISHED of the stage before,
    and a failed execution looks complete in MLflow. Records a FAILED (KILLED on Ctrl-C)
    run for the stage, with the error as a tag, and ends the parent the same way. Does
    nothing outside DVC, when the stage's run already exists, or when no parent was
    created yet (nothing of this execution is in MLflow). Never raises: the stage's own
    error is what the user must see.
    """
    from synthvit import distributed

    stage = os.environ.get("DVC_STAGE")
    if not stage or _stage_run_opened or not distributed.is_main():
        return
    uri = tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return
    status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    from synthvit import tracking_check

    if tracking_check.store_problem(uri):  # a server that is down has nothing to record into
        return
    try:
        client = open_client(uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(experiments, filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_key()}'", max_results=1)
        if not found:
            return
        parent = found[0].info
        tags = {**run_tags(stage), "mlflow.parentRunId": parent.run_id, ERROR_TAG: str(error)[:4000] or type(error).__name__}
        run = client.create_run(parent.experiment_id, run_name=stage, tags=tags)
        client.set_terminated(run.info.run_id, status)
        client.set_terminated(parent.run_id, status)
    except Exception as exc:  # noqa: BLE001 - recording is best effort
        import sys

        print(f"warning: could not record the failure in MLflow ({uri}): {exc}", file=sys.stderr)


def log_model(mlflow, model, checkpoint: Path, registered_model: str = "", alias: str = "") -> str | None:
    """Log the model as an MLflow PyTorch model, with the synthvit checkpoint beside it.

    Pickle serialisation (not mlflow 3's pt2 default, which needs torch.export and an
    input example) loads back as the same nn.Module; the checkpoint carries the class
    names and normalisation that `synthvit predict` needs. Requirements are given
    explicitly so MLflow does not spend time inferring them.

    With `registered_model`, the logged model becomes a new version of that registered
    model and `alias` moves to it, so `models:/NAME@ALIAS` names the newest fine-tune.
    Returns the registered version, or None.
    """
    import logging

    import timm
    import torch

    from synthvit.models import unwrap

    from synthvit import distributed

    if not distributed.is_main():
        return
    # MLflow warns about pickle on every save; the choice is deliberate (see above).
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    info = mlflow.pytorch.log_model(
        unwrap(model).to("cpu").eval(),
        name="model",
        serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"],
        extra_files=[str(checkpoint)],
    )
    if not registered_model:
        return None
    return register_model(mlflow, info.model_uri, registered_model, alias)


def register_model(mlflow, model_uri: str, name: str, alias: str = "") -> str:
    """A new version of registered model `name` from `model_uri`, with `alias` moved to it.

    Under the store lock: parallel experiments (`dvc queue start -j N`) may register the
    first version of one name at the same time.
    """
    run = mlflow.active_run()
    tags = {k: v for k, v in (run.data.tags.items() if run else ()) if k.startswith("dvc.")}
    if run and GIT_COMMIT_TAG in run.data.tags:
        tags["git.commit"] = run.data.tags[GIT_COMMIT_TAG]  # model versions get no mlflow.source.* tags of their own
    with store_lock(mlflow.get_tracking_uri()):
        version = mlflow.register_model(model_uri, name, tags=tags or None)
        if alias:
            mlflow.MlflowClient().set_registered_model_alias(name, alias, version.version)
    print(f"registered model {name} version {version.version}" + (f" as models:/{name}@{alias}" if alias else ""))
    return str(version.version)


def metric_name(name: str) -> str:
    """MLflow accepts letters, digits, _ - . / and spaces in metric names."""
    import re

    return re.sub(r"[^\w\-./ ]", "_", name)

"""A DVC stage as MLflow records it: one run per stage, under one parent run per pipeline execution.

`stage_context` is the preamble every stage shares: validate params.yaml, ask the
tracking store (seconds, before any work), open the stage's MLflow run with the params
sections the stage reads, and at the end write the stage's timing file
(metrics/timing/<stage>.json: wall time, machine, throughput) and end the run FINISHED,
FAILED or KILLED.

Grouping: DVC runs each stage as its own process, so stages find their parent run by a
key: the DVC process that launched them (pid and start time), which is the same for
every stage of one `dvc repro` / `dvc exp run` and differs between executions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import mlflow
import psutil
from mlflow.utils.git_utils import get_git_commit
from pydantic import BaseModel

from synthvit.config import Params, check_params_unchanged, parse_params, read_params_file
from synthvit.data.images import check_available
from synthvit.errors import DISK_ERRORS, UserError, fix_for
from synthvit.models import check_weights_available
from synthvit.tracking import health, summary, timing
from synthvit.tracking.outbox import OutboxRun
from synthvit.tracking.store import (
    ERROR_TAG,
    GIT_COMMIT_TAG,
    HOST_TAG,
    PIPELINE_TAG,
    get_experiment_id,
    open_client,
    refused_store_write,
    sqlite_path,
    tracking_uri,
    use_store,
)
from synthvit.training import distributed


@dataclasses.dataclass
class Stage:
    """What a stage's code gets from `stage_context`."""

    name: str
    params: Params
    run: OutboxRun | distributed.Silent  # the stage's MLflow run (log_metrics, log_artifact, ...)
    timing: dict  # figures for the timing file, beside the wall time and the machine
    started_with: dict  # params.yaml as the stage read it, once, at its start

    def check_params_unchanged(self) -> None:
        """Call before writing the outputs: stops the stage when params.yaml changed under it."""
        check_params_unchanged(self.name, self.started_with)


@contextlib.contextmanager
def stage_context(name: str, *sections: str, needs=()):
    """Run one DVC stage: yields a `Stage` whose run logs `sections` of params.yaml as its params.
    `needs`: files the stage reads that an earlier stage writes, checked before anything is opened."""
    try:
        started_with = read_params_file()
        params = parse_params(started_with)
        health.check_tracking_store()  # within seconds, before any work: is the server there and letting us in?
        check_pipeline_inputs(params)
        for path in needs(params) if callable(needs) else needs:
            if not Path(path).exists():
                raise UserError(f"{path} not found: run the stage that writes it first (dvc repro)")
        check_writable(name)
    except BaseException as exc:
        record_early_failure(name, exc)
        raise
    logged = {}
    for section in sections:
        value = getattr(params, section)
        logged.update(flat(value, section) if isinstance(value, BaseModel) else {section: value})
    with stage_run(name, logged, params.tracking.experiment_name) as run:
        stage = Stage(name, params, run, {}, started_with)
        yield stage
        if distributed.is_main():
            run.log_artifact(str(timing.write_timing(name, **stage.timing)))


def check_pipeline_inputs(params: Params) -> None:
    """What the whole pipeline will read, checked by whichever stage runs first: the fine-tuning data
    (here or downloadable) and ImageNet weights (init=imagenet). An offline `make demo` then stops
    within seconds, not after minutes of fractals and pre-training."""
    check_available(params.data)
    if params.finetune.init == "imagenet":
        check_weights_available(params.model, params.finetune.imagenet_weights)


def check_writable(stage: str) -> None:
    """A stage writes its outputs in the working directory (the repository): a read-only checkout, or one
    the user may not write, is one line now, before any work, not an error after training."""
    try:
        with tempfile.TemporaryFile(dir=Path.cwd(), prefix=".synthvit-write-check-"):
            pass
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        raise UserError(
            f"{stage} cannot write its outputs in {Path.cwd()} ({DISK_ERRORS[exc.errno]}); {fix_for(exc.errno)}"
        ) from None


def flat(section: BaseModel, prefix: str) -> dict:
    """`{"prefix.key": value}` for logging a params section as MLflow params."""
    return {f"{prefix}.{k}": v for k, v in section.model_dump().items()}


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
    parent_tags.update({PIPELINE_TAG: key, HOST_TAG: socket.gethostname()})
    parent = client.create_run(experiment_id, run_name=parent_name(name), tags=parent_tags)
    return parent.info.run_id


def dvc_process_alive(key: str) -> bool:
    """Whether the DVC process a pipeline key names (`dvc-PID-START_MS`, pipeline_key) still runs here."""
    _, pid, started = key.split("-")
    try:
        return int(psutil.Process(int(pid)).create_time() * 1000) == int(started)
    except psutil.Error:
        return False


def end_abandoned(client, experiment_id: str) -> None:
    """End KILLED the runs an execution killed outright (kill -9, the OOM killer: no cleanup runs) left
    RUNNING forever: a parent run of this machine whose DVC process is gone, and its stage runs still
    RUNNING. A parent is RUNNING only while one of its stages runs (each stage ends it), so its DVC
    process being gone means nobody will end it. Other machines' runs (a shared server) are not touched,
    nor runs made outside DVC. Never fails the stage."""
    try:
        host = socket.gethostname().replace("'", "")
        parents = client.search_runs(
            [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
        )
        for parent in parents:
            key = parent.data.tags.get(PIPELINE_TAG, "")
            if not re.fullmatch(r"dvc-\d+-\d+", key) or dvc_process_alive(key):
                continue
            stages = client.search_runs(
                [experiment_id],
                filter_string=f"attributes.status = 'RUNNING' and tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            )
            for run in [*stages, parent]:
                client.set_terminated(run.info.run_id, "KILLED")
    except Exception as exc:  # noqa: BLE001 - housekeeping of earlier executions: the stage goes on regardless
        print(f"warning: could not end the runs a killed execution left running: {exc}", file=sys.stderr)


def parent_name(experiment: str) -> str:
    """A pipeline run's name, what differs between arms first: `pretrained · demo-1203-1015-synthetic`
    (the UI cuts long names short, and the experiment names of two arms often differ only at the end)."""
    return f"{summary.execution_params().get('finetune.init', 'pipeline')} · {experiment}"


@contextlib.contextmanager
def stage_run(stage: str, params: dict, experiment_name: str):
    """An MLflow run for one stage, nested under its pipeline's parent run.

    Yields an `outbox.OutboxRun`: the `mlflow` module's logging calls on the active run,
    kept in a local outbox while the server is away (see outbox.py). The stage run and
    its parent end FINISHED, FAILED when the stage raises, KILLED on Ctrl-C or SIGTERM.
    A local SQLite store on a full disk (or read-only) is an OSError naming mlflow.db,
    which run_main prints as one line, not a page of SQLAlchemy.
    """
    try:
        with _stage_run(stage, params, experiment_name) as run:
            yield run
    except Exception as exc:
        refused = refused_store_write(tracking_uri(), exc)
        if refused is None:
            raise
        raise refused from None


@contextlib.contextmanager
def _stage_run(stage: str, params: dict, experiment_name: str):
    if not distributed.is_main():  # under torchrun, process 0 records the run
        yield distributed.Silent()
        return
    health.shorten_http_retries()
    uri = use_store()
    client = open_client(uri)
    experiment_id = get_experiment_id(client, uri, experiment_name)
    tags = run_tags(stage)
    end_abandoned(client, experiment_id)
    parent_id = find_or_create_parent(client, experiment_id, pipeline_key(), tags)
    run = OutboxRun(
        uri,
        mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent_id, tags=tags).info.run_id,
    )
    status = "FAILED"
    try:
        run.log_params(params)
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:  # also SIGTERM (errors.Terminated)
        status = "KILLED"
        raise
    except Exception as exc:
        with contextlib.suppress(Exception):  # the stage's own error is what the user must see
            client.set_tag(run.run_id, ERROR_TAG, str(exc)[:4000] or type(exc).__name__)
        raise
    finally:
        # Ending the run may fail as the stage did (a full disk); then the stage's own error is what counts.
        with contextlib.suppress(Exception) if status != "FINISHED" else contextlib.nullcontext():
            run.end(status, parent_id)
    if not run.pending():  # finished, and its metrics are on the server to summarise
        record_on_parent(client, parent_id, stage, run.run_id)


def record_on_parent(client, parent_id: str, stage: str, run_id: str) -> None:
    """The execution's params and headline metrics on its parent run (summary.py); never fails the stage."""
    try:
        summary.record_stage(client, parent_id, stage, run_id)
    except Exception as exc:  # noqa: BLE001 - the stage's outputs are written; the summary is a convenience
        print(f"warning: could not record {stage}'s headline on the pipeline run: {exc}", file=sys.stderr)


def record_early_failure(stage: str, error: BaseException) -> None:
    """Fail the pipeline's parent run when a DVC stage fails before its own run opened (params
    invalid, server refusing the login): the parent would otherwise keep the FINISHED of the
    stage before, and a failed execution would look complete in MLflow.

    Records a FAILED (KILLED on Ctrl-C) run for the stage, with the error as a tag, and ends
    the parent the same way. Does nothing outside DVC or when no parent was created yet
    (nothing of this execution is in MLflow). Never raises: the stage's own error is what
    the user must see.
    """
    if not os.environ.get("DVC_STAGE") or not distributed.is_main():
        return
    uri = tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return
    if health.store_problem(uri):  # a server that is down has nothing to record into
        return
    status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    try:
        client = open_client(uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(
            experiments, filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_key()}'", max_results=1
        )
        if not found:
            return
        parent = found[0].info
        tags = {
            **run_tags(stage),
            "mlflow.parentRunId": parent.run_id,
            ERROR_TAG: str(error)[:4000] or type(error).__name__,
        }
        run = client.create_run(parent.experiment_id, run_name=stage, tags=tags)
        client.set_terminated(run.info.run_id, status)
        client.set_terminated(parent.run_id, status)
    except Exception as exc:  # noqa: BLE001 - recording is best effort
        print(f"warning: could not record the failure in MLflow ({uri}): {exc}", file=sys.stderr)


def metric_name(name: str) -> str:
    """MLflow accepts letters, digits, _ - . / and spaces in metric names."""
    return re.sub(r"[^\w\-./ ]", "_", name)

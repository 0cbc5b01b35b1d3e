"""A DVC stage as MLflow records it: one run per stage, under one parent run per pipeline execution.

`stage_run` opens a stage's run with the params the stage reads (pipeline.stage_context, the
stages' preamble, calls it) and ends it FINISHED, FAILED or KILLED;
`record_early_failure` records a stage that failed before its run opened.

Grouping: DVC runs each stage as its own process, so stages find their parent run by a
key: the DVC process that launched them (pid and start time), which is the same for
every stage of one `dvc repro` / `dvc exp run` and differs between executions.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import uuid
from pathlib import Path

import mlflow
import psutil
from mlflow.utils.git_utils import get_git_commit

from synthvit.errors import interruption
from synthvit.tracking import health, store, summary
from synthvit.tracking.outbox import OutboxRun


def pipeline_key() -> str:
    """The same for every stage of one execution: the DVC process that launched them (`dvc repro`, `dvc exp run`,
    a queue worker), the nearest ancestor that is DVC; a key of its own for a stage run by hand."""
    with contextlib.suppress(psutil.Error, OSError):
        for process in psutil.Process().parents():
            # `dvc ...`, `python /venv/bin/dvc ...` or `python -m dvc ...`
            if any(Path(arg).name == "dvc" for arg in process.cmdline()[:3]):
                return f"dvc-{process.pid}-{int(process.create_time() * 1000)}"
    return f"manual-{uuid.uuid4().hex[:12]}"


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
        tags[store.GIT_COMMIT_TAG] = commit
    return tags


def find_parent(client, experiment_ids: list[str], key: str):
    """The parent run of the pipeline execution `key` names, or None."""
    found = client.search_runs(experiment_ids, filter_string=f"tags.`{store.PIPELINE_TAG}` = '{key}'", max_results=1)
    return found[0] if found else None


def find_or_create_parent(client, experiment_id: str, key: str, tags: dict) -> str:
    found = find_parent(client, [experiment_id], key)
    if found:
        client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    name = os.environ.get("DVC_EXP_NAME") or ("manual" if key.startswith("manual") else "dvc repro")
    parent_tags = {k: v for k, v in tags.items() if k != "dvc.stage"}
    parent_tags.update({store.PIPELINE_TAG: key, store.HOST_TAG: socket.gethostname()})
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
        running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
        abandoned = {
            run.info.run_id
            for run in running
            if run.data.tags.get(store.HOST_TAG) == socket.gethostname()
            and re.fullmatch(r"dvc-\d+-\d+", key := run.data.tags.get(store.PIPELINE_TAG, ""))
            and not dvc_process_alive(key)
        }
        for run in running:  # the parents, and their stages
            if {run.info.run_id, run.data.tags.get("mlflow.parentRunId")} & abandoned:
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
        health.shorten_http_retries()
        uri = store.use_store()
        client = store.open_client(uri)
        experiment_id = store.get_experiment_id(client, uri, experiment_name)
        tags = run_tags(stage)
        end_abandoned(client, experiment_id)
        parent_id = find_or_create_parent(client, experiment_id, pipeline_key(), tags)
        started = mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent_id, tags=tags)
        run = OutboxRun(uri, started.info.run_id)
        status = "FAILED"
        try:
            run.log_params(params)
            yield run
            status = "FINISHED"
        except BaseException as exc:
            # Ctrl-C, SIGTERM (errors.Terminated), also one that landed while a C extension was imported: a stop.
            status = "KILLED" if interruption(exc) else "FAILED"
            if status == "FAILED" and isinstance(exc, Exception):
                with contextlib.suppress(Exception):  # the stage's own error is what the user must see
                    client.set_tag(run.run_id, store.ERROR_TAG, error_text(exc))
            raise
        finally:
            # Ending the run may fail as the stage did (a full disk); then the stage's own error is what counts.
            with contextlib.suppress(Exception) if status != "FINISHED" else contextlib.nullcontext():
                run.end(status, parent_id)
        if not run.pending():  # finished, and its metrics are on the server to summarise
            try:  # the execution's params and headline metrics on its parent run (summary.py)
                summary.record_stage(client, parent_id, stage, run.run_id)
            except Exception as exc:  # noqa: BLE001 - the stage's outputs are written; the summary is a convenience
                print(f"warning: could not record {stage}'s headline on the pipeline run: {exc}", file=sys.stderr)
    except Exception as exc:
        refused = store.refused_store_write(store.tracking_uri(), exc)
        if refused is None:
            raise
        raise refused from None


def record_early_failure(stage: str, error: BaseException) -> None:
    """Fail the pipeline's parent run when a DVC stage fails before its own run opened (params
    invalid, server refusing the login): the parent would otherwise keep the FINISHED of the
    stage before, and a failed execution would look complete in MLflow.

    Records a FAILED (KILLED on Ctrl-C) run for the stage, with the error as a tag, and ends
    the parent the same way. Does nothing outside DVC or when no parent was created yet
    (nothing of this execution is in MLflow). Never raises: the stage's own error is what
    the user must see.
    """
    if not os.environ.get("DVC_STAGE"):
        return
    uri = store.tracking_uri()
    db = store.sqlite_path(uri)
    if (db is not None and not db.is_file()) or health.store_problem(uri):
        return  # no store yet, or a server that is down: nothing of this execution to fail
    status = "KILLED" if interruption(error) else "FAILED"
    try:
        client = store.open_client(uri)
        found = find_parent(client, [e.experiment_id for e in client.search_experiments()], pipeline_key())
        if not found:
            return
        parent = found.info
        tags = {
            **run_tags(stage),
            "mlflow.parentRunId": parent.run_id,
            store.ERROR_TAG: error_text(error),
        }
        run = client.create_run(parent.experiment_id, run_name=stage, tags=tags)
        client.set_terminated(run.info.run_id, status)
        client.set_terminated(parent.run_id, status)
    except Exception as exc:  # noqa: BLE001 - recording is best effort
        print(f"warning: could not record the failure in MLflow ({uri}): {exc}", file=sys.stderr)


def error_text(error: BaseException) -> str:
    """A stage's error as the ERROR_TAG on its run holds it (MLflow keeps tag values short)."""
    return str(error)[:4000] or type(error).__name__


def metric_name(name: str) -> str:
    """MLflow accepts letters, digits, _ - . / and spaces in metric names."""
    return re.sub(r"[^\w\-./ ]", "_", name)

"""What every stage (stages/*.py) does before its work and after it: params, checks, an MLflow run, timing.

`stage_context` validates params.yaml, asks the tracking store (seconds, before any work),
checks what the whole pipeline will read and that the stage can write its outputs, then
opens the stage's MLflow run (tracking.runs.stage_run) with the params the stage reads;
when the stage ends it writes the stage's timing file (metrics/timing/<stage>.json: wall
time, machine, throughput). A stage that fails before its run opens is recorded as failed
all the same. It checks and records, and never changes what a stage writes: bookkeeping,
like tracking/, so dvc.yaml does not list it as a dependency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path

from synthvit.config import Params, check_params_unchanged, parse_params, read_params_file
from synthvit.data.images import check_available
from synthvit.errors import DISK_ERRORS, UserError, fix_for
from synthvit.models import check_weights_available
from synthvit.tracking import health, timing
from synthvit.tracking.outbox import OutboxRun
from synthvit.tracking.runs import record_early_failure, stage_run
from synthvit.tracking.summary import flatten, used_params
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

    def log_epoch(self, metrics: dict) -> None:
        """One epoch's metrics on the run, at the epoch's step (engine.train's `on_epoch`)."""
        self.run.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=metrics["epoch"])


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
        if distributed.is_main():
            record_early_failure(name, exc)
        raise
    if not distributed.is_main():  # under torchrun, process 0 records the run
        yield Stage(name, params, distributed.Silent(), {}, started_with)
        return
    logged = used_params(flatten(params.model_dump(include=set(sections))))
    with stage_run(name, logged, params.tracking.experiment_name) as run:
        stage = Stage(name, params, run, {}, started_with)
        yield stage
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

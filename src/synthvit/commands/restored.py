"""`synthvit record-restored`: record in MLflow a pipeline execution that DVC restored from its cache.

    synthvit record-restored [--name NAME] [--experiment NAME]

A stage that DVC restores (`dvc exp run --pull`, `dvc repro --pull`, `dvc exp apply`
then `dvc pull`) runs no code, so it logs no MLflow run. Run this afterwards in the
workspace: it reads what the restore left there and writes one parent run with one run
per stage, as the stages themselves would have: the stage's params as dvc.lock records
them, its metrics (metrics/<stage>.json; per-epoch curves from plots/<stage>/history.csv)
and its output files (figures, tables; not the models, which DVC keeps). Every run is
tagged `synthvit.restored=true` and `dvc.outs` (the outputs' hashes in dvc.lock), so a
search such as `tags.synthvit.restored = 'true'` finds them. Recording the same dvc.lock
twice finds the first record instead of writing a second.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import pandas as pd
import yaml
from mlflow.entities import Metric, Param

from synthvit.commands.compare import default_experiment
from synthvit.commands.reporting.sources import TRAINING_STAGES, pipeline_stages, read_json
from synthvit.errors import UserError
from synthvit.files import history_path, metrics_path
from synthvit.tracking import summary
from synthvit.tracking.runs import find_parent, metric_name, parent_name, run_tags
from synthvit.tracking.store import PIPELINE_TAG, get_experiment_id, open_client, use_store
from synthvit.tracking.summary import RESTORED_TAG, flatten, used_params


def stage_metrics(stage: str, at: int) -> list[Metric]:
    """What the stage logged: its end numbers (final_* for training stages, the summary for evaluate) and,
    for a training stage, its per-epoch curves."""
    path, prefix = metrics_path(stage), "final_" if stage in TRAINING_STAGES else ""
    values = read_json(path)
    metrics = [
        Metric(metric_name(prefix + k), float(v), at, 0) for k, v in values.items() if isinstance(v, int | float)
    ]
    if stage in TRAINING_STAGES and history_path(stage).is_file():
        curves = pd.read_csv(history_path(stage)).melt(id_vars="epoch").dropna()
        metrics += [Metric(p.variable, float(p.value), at, int(p.epoch)) for p in curves.itertuples()]
    return metrics


def output_files(outs: list[dict]) -> list[Path]:
    """The stage's output files worth browsing (tables, figures, manifests); models stay in DVC."""
    paths = [Path(out["path"]) for out in outs]
    files = [file for path in paths for file in (sorted(path.rglob("*")) if path.is_dir() else [path])]
    return [p for p in files if p.is_file() and p.suffix in (".csv", ".png", ".json") and "images" not in p.parts]


def read_lock() -> dict:
    lock = Path("dvc.lock")
    if not lock.is_file():
        raise UserError("dvc.lock not found: restore the pipeline first (dvc exp run --pull, or dvc repro --pull)")
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    missing = [out["path"] for stage in stages.values() for out in stage.get("outs", [])]
    if missing := [path for path in missing if not Path(path).exists()]:
        raise UserError(
            f"outputs named in dvc.lock are missing ({', '.join(missing[:3])}): "
            "restore them first (dvc pull, or dvc exp run --pull)"
        )
    return stages


def record(name: str, experiment_name: str) -> str:
    """The parent run id of the restored execution recorded from this workspace."""
    stages = read_lock()
    key = f"restored-{hashlib.sha256(Path('dvc.lock').read_bytes()).hexdigest()[:16]}"
    uri = use_store()
    client = open_client(uri)
    experiment_id = get_experiment_id(client, uri, experiment_name)
    found = find_parent(client, [experiment_id], key)  # the parent of an execution recorded before
    if found:
        print(f"already recorded: run {found.info.run_id} in MLflow experiment {experiment_name!r} ({uri})")
        return found.info.run_id
    tags = {**run_tags("pipeline"), "dvc.exp_name": name, RESTORED_TAG: "true"}
    tags.pop("dvc.stage")
    parent = client.create_run(
        experiment_id, run_name=f"{parent_name(name)} (restored)", tags={**tags, PIPELINE_TAG: key}
    )
    order = [s for s in pipeline_stages() if s in stages] + [s for s in stages if s not in pipeline_stages()]
    now = int(time.time() * 1000)
    for stage in order:
        outs = stages[stage].get("outs", [])
        outputs = " ".join(f"{o['path']}:{o.get('md5', '')}" for o in outs)
        stage_tags = {**tags, "dvc.stage": stage, "mlflow.parentRunId": parent.info.run_id, "dvc.outs": outputs}
        run_id = client.create_run(experiment_id, run_name=stage, tags=stage_tags).info.run_id
        recorded = flatten((stages[stage].get("params") or {}).get("params.yaml") or {})
        params = [Param(k, str(v)) for k, v in used_params(recorded).items()]
        client.log_batch(run_id, params=params, metrics=stage_metrics(stage, now))  # sent in MLflow's batches
        for path in output_files(outs):
            client.log_artifact(run_id, str(path), artifact_path=str(path.parent) if path.parent != Path(".") else None)
        client.set_terminated(run_id, "FINISHED")
        summary.record_stage(client, parent.info.run_id, stage, run_id)  # headline on the parent, as live runs
    client.set_terminated(parent.info.run_id, "FINISHED")
    print(
        f"recorded restored execution {name!r}: run {parent.info.run_id} in MLflow experiment "
        f"{experiment_name!r} ({uri}), stages {', '.join(order)}"
    )
    return parent.info.run_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name",
        default="workspace",
        help="the DVC experiment the outputs belong to, as the runs' dvc.exp_name (default: workspace)",
    )
    parser.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment_name in params.yaml)")


def run(args) -> int:
    record(args.name, args.experiment or default_experiment())
    return 0

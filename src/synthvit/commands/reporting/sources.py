"""Where reported runs come from, each read into the same row (one dict per pipeline execution).

- DVC: `dvc exp show --json` for the list, an experiment's git commit for its params and dvc.lock,
  and DVC's file system (its cache) for its outputs: a stage restored from the run cache reads
  exactly like one that ran. `Experiment` is one of them.
- MLflow: `search_runs`, a parent run per execution and its stage runs.
- results/: a locked run's folder (commands/results.py writes it).

A row holds `name`, `id`, `started`, `status`, the params as dotted keys (`finetune.init`), and
the RESULTS columns. Stages come from dvc.yaml (`pipeline_stages`); params are flattened by
tracking.summary.flatten; metrics files are the stages' own (files.metrics_path).
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from functools import cached_property
from pathlib import Path

import mlflow
import pandas as pd
import yaml
from dvc.api import DVCFileSystem
from mlflow.exceptions import MlflowException

from synthvit.config import MISSING, read_yaml, value_at
from synthvit.errors import UserError
from synthvit.files import from_pipeline_pretraining, history_path, metrics_path, repo_root, timing_path
from synthvit.tracking.store import PIPELINE_TAG, use_store
from synthvit.tracking.summary import flatten

TRAINING_STAGES = ("pretrain", "finetune")
PRETRAINING = ("generate_synthetic", "pretrain")  # the stages only a model fine-tuned from them needed
# column: (stage, key in metrics/<stage>.json). MLflow holds a training stage's as final_<key>.
RESULTS = {
    "test_top1": ("evaluate", "top1"),
    "test_top5": ("evaluate", "top5"),
    "test_ece": ("evaluate", "ece"),
    "eval_top1": ("finetune", "eval_acc"),  # val_top1 or curve_top1 in a row (result_columns)
    "pretrain_train_acc": ("pretrain", "train_acc"),
    "pretrain_heldout_acc": ("pretrain", "eval_acc"),  # fractal instances no epoch drew
    "parameters": ("finetune", "num_parameters"),
}


def pipeline_stages() -> list[str]:
    """The stages dvc.yaml declares, in its order (the pipeline's own: dependencies come first)."""
    path = repo_root() / "dvc.yaml"
    return list((read_yaml(path) or {}).get("stages", {})) if path.is_file() else []


def needed(stage: str, params: dict) -> bool:
    """Whether a run (flat `params`) needed the stage: a scratch, mimetic or ImageNet arm did not need the
    fractals and pre-training that DVC ran or restored beside it (files.from_pipeline_pretraining)."""
    pretrained = from_pipeline_pretraining(params.get("finetune.init"), params.get("finetune.backbone"))
    return pretrained or stage not in PRETRAINING


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def result_columns(metric, params: dict, walls: dict, rates: dict | None = None) -> dict:
    """The RESULTS columns from `metric(stage, key)`, the wall seconds per stage and their total, the
    training rates (`rates`: images/s per stage): only of the stages the run needed."""
    row = {column: metric(stage, key) if needed(stage, params) else None for column, (stage, key) in RESULTS.items()}
    walls = {stage: seconds for stage, seconds in walls.items() if needed(stage, params)}
    # fine-tuning's held-out score: a validation split, or (data.val_fraction 0) the test curve's subset
    held_out = "val_top1" if float(params.get("data.val_fraction") or 0) else "curve_top1"
    row[held_out] = row.pop("eval_top1")
    known = [seconds for seconds in walls.values() if seconds is not None]
    return {
        **row,
        **{f"wall_{stage}_s": seconds for stage, seconds in walls.items()},
        "wall_total_s": sum(known) if known else None,
        **{f"{stage}_img_per_s": rate if needed(stage, params) else None for stage, rate in (rates or {}).items()},
    }


# ---- DVC ----------------------------------------------------------------------------


def dvc_exp_show() -> list:
    """`dvc exp show --json`. Not dvc.api.exp_show: in DVC 3.67 it returns the printed table's cells
    (7-character revs, times without a date, integers as floats), which lose what rows need."""
    result = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise UserError(f"dvc exp show failed: {lines[-1] if lines else f'exit code {result.returncode}'}")
    return json.loads(result.stdout)


def experiment_revs() -> dict[str, str]:
    """{experiment name: its commit} of the experiments DVC shows (the current baseline's)."""
    revs = {}
    for baseline in dvc_exp_show():
        for experiment in baseline.get("experiments") or []:
            revs.update({rev["name"]: rev["rev"] for rev in experiment["revs"] if rev.get("name")})
    return revs


@dataclasses.dataclass
class Experiment:
    """One DVC experiment (or the workspace, rev None): its params, lock and outputs."""

    name: str
    rev: str | None

    @classmethod
    def named(cls, name: str, revs: dict[str, str] | None = None) -> Experiment:
        if name == "workspace":
            return cls(name, None)
        revs = experiment_revs() if revs is None else revs
        if name not in revs:
            raise UserError(
                f"no DVC experiment {name!r} here (dvc exp show); recent ones: {', '.join(sorted(revs)[-8:]) or 'none'}"
            )
        return cls(name, revs[name])

    @cached_property
    def fs(self) -> DVCFileSystem:
        return DVCFileSystem(repo=".", rev=self.rev)

    def exists(self, path) -> bool:
        return self.fs.exists(str(path))

    def text(self, path) -> str:
        try:
            return self.fs.read_text(str(path))
        except FileNotFoundError:
            raise UserError(f"experiment {self.name!r} has no {path}: did its pipeline run that stage?") from None
        except Exception as exc:  # noqa: BLE001 - DVC reports a missing cache object in several ways
            raise UserError(
                f"cannot read {path} of experiment {self.name!r} ({type(exc).__name__}): its outputs are "
                "not in the local DVC cache; `dvc exp pull REMOTE NAME` (or `dvc pull`) first"
            ) from None

    @cached_property
    def params(self) -> dict:
        return yaml.safe_load(self.text("params.yaml")) or {}

    @cached_property
    def lock(self) -> dict:
        return yaml.safe_load(self.text("dvc.lock")) or {} if self.exists("dvc.lock") else {}

    def param(self, dotted: str, default=None):
        value = value_at(self.params, dotted)
        return default if value is None or value is MISSING else value

    def ran(self, stage: str) -> bool:
        """Whether the experiment's dvc.lock holds the stage (it ran, or DVC restored it)."""
        return stage in (self.lock.get("stages") or {})

    def metrics(self, stage: str, kind=metrics_path) -> dict:
        """metrics/<stage>.json, or (`kind` timing_path) its timing file; {} when the stage did not run."""
        path = kind(stage)
        return json.loads(self.text(path)) if self.ran(stage) and self.exists(path) else {}

    def history(self, stage: str) -> pd.DataFrame:
        path = history_path(stage)
        return pd.read_csv(io.StringIO(self.text(path))) if self.ran(stage) and self.exists(path) else pd.DataFrame()

    def row(self, status: str = "success", started=None, params: dict | None = None, metric=None) -> dict:
        """The experiment as a row; `params` (flat) and `metric(stage, key)` when already known (exp show)."""
        params = flatten(self.params) if params is None else params
        metric = metric or (lambda stage, key: self.metrics(stage).get(key))
        timings = (
            {stage: self.metrics(stage, timing_path) for stage in pipeline_stages()} if status == "success" else {}
        )
        walls = {stage: t.get("wall_seconds") for stage, t in timings.items() if t}
        rates = {stage: timings.get(stage, {}).get("train_images_per_s") for stage in TRAINING_STAGES}
        return {
            "name": self.name,
            "id": self.rev,
            "started": started,
            "status": status,
            # As text, the way MLflow logs params: both sources read alike (a null depth stays "None").
            **{key: str(value) for key, value in params.items()},
            **result_columns(metric, params, walls, rates),
        }


def dvc_rows(show: list) -> pd.DataFrame:
    """One row per experiment of `dvc exp show --json`, plus baseline commits that have test metrics
    (the workspace holds whatever ran last: left out). The params are params.yaml's (dvc.yaml names no other)."""
    rows = []
    for baseline in (b for b in show if b["rev"] != "workspace"):
        entries = [(baseline, "success")] + [
            (rev, (experiment.get("executor") or {}).get("state", "success"))  # no executor: ran here and saved
            for experiment in baseline.get("experiments") or []
            for rev in experiment["revs"]
        ]
        for rev, state in entries:
            data = rev.get("data") or {}
            params = flatten(((data.get("params") or {}).get("params.yaml") or {}).get("data") or {})
            metrics = {path: content.get("data") or {} for path, content in (data.get("metrics") or {}).items()}
            row = Experiment(rev.get("name") or rev["rev"][:7], rev["rev"]).row(
                state,
                pd.Timestamp(data["timestamp"]) if data.get("timestamp") else None,
                params,
                lambda stage, key, metrics=metrics: metrics.get(str(metrics_path(stage)), {}).get(key),
            )
            if rev is not baseline or row["test_top1"] is not None:
                rows.append(row)
    return pd.DataFrame(rows)


# ---- MLflow -------------------------------------------------------------------------


def search_runs(experiment_id: str, filter_string: str = "") -> pd.DataFrame:
    try:
        return mlflow.search_runs([experiment_id], filter_string=filter_string)
    except MlflowException as exc:
        raise UserError(f"--filter {filter_string!r} is not a valid MLflow search filter: {exc.message}") from None


def mlflow_rows(uri: str, experiment_name: str, filter_string: str = "") -> pd.DataFrame:
    """One row per pipeline execution (parent run) in the experiment, with its stages' params and results."""
    use_store(
        create=False,
        missing="cannot compare MLflow runs; run the pipeline first (dvc exp run), "
        "or point MLFLOW_TRACKING_URI at your store",
    )
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        names = ", ".join(e.name for e in mlflow.search_experiments()) or "none"
        raise UserError(f"no MLflow experiment {experiment_name!r} in {uri}; experiments there: {names}")
    runs = search_runs(experiment.experiment_id)
    if runs.empty or f"tags.{PIPELINE_TAG}" not in runs:
        raise UserError(f"no pipeline runs in MLflow experiment {experiment_name!r} ({uri}): run the pipeline first")
    parent_of = runs.get("tags.mlflow.parentRunId", pd.Series(None, index=runs.index, dtype=object))
    parents = runs[runs[f"tags.{PIPELINE_TAG}"].notna()]
    if filter_string:  # stage runs hold what a filter names: keep an execution when any of its runs matches
        matched = search_runs(experiment.experiment_id, filter_string)
        keep = set(matched["run_id"]) | set(matched.get("tags.mlflow.parentRunId", pd.Series()).dropna())
        parents = parents[parents["run_id"].isin(keep)]
    return pd.DataFrame([mlflow_row(parent, runs[parent_of == parent["run_id"]]) for _, parent in parents.iterrows()])


def seconds(run: pd.Series) -> float | None:
    unfinished = pd.isna(run["start_time"]) or pd.isna(run["end_time"])
    return None if unfinished else (run["end_time"] - run["start_time"]).total_seconds()


# Params that stages log as facts about their run, not as inputs: never a study's variable.
RUN_FACTS = {"model.num_parameters", "data.train_images", "data.num_classes"}


def mlflow_row(parent: pd.Series, stage_runs: pd.DataFrame) -> dict:
    by_stage = {run["tags.mlflow.runName"]: run for _, run in stage_runs.sort_values("start_time").iterrows()}
    stages = [stage for stage in pipeline_stages() or list(by_stage) if stage in by_stage]
    # in pipeline order: finetune's data.* win over pretrain's
    params = {k[7:]: v for s in stages for k, v in by_stage[s].items() if k.startswith("params.") and pd.notna(v)}

    def metric(stage: str, key: str):
        name = f"metrics.{'final_' if stage in TRAINING_STAGES else ''}{key}"
        value = by_stage[stage].get(name) if stage in by_stage else None
        return None if value is None or pd.isna(value) else value

    walls = {stage: seconds(by_stage[stage]) for stage in stages}
    return {
        "name": parent.get("tags.dvc.exp_name") or parent.get("tags.mlflow.runName"),
        "id": parent["run_id"],
        "started": parent["start_time"],
        "status": parent["status"],
        **{k: v for k, v in params.items() if k not in RUN_FACTS},
        **result_columns(metric, params, walls, {s: metric(s, "train_images_per_s") for s in TRAINING_STAGES}),
        "wall_total_s": seconds(parent),  # first stage start to last stage end: start-up included
    }


# ---- results/ -----------------------------------------------------------------------


def locked_row(folder: Path) -> dict:
    """One locked run (results/GROUP/NAME) as a row, with its table row and seed from run.yaml."""
    run = read_yaml(folder / "run.yaml")
    params = flatten(read_yaml(folder / "params.yaml") or {})
    walls = {stage: seconds for stage, seconds in (run.get("wall_seconds") or {}).items() if stage != "total"}
    return {
        "name": folder.name,
        "row": run["row"],
        "seed": run.get("seed"),
        "experiment": run["experiment"],
        **result_columns(lambda stage, key: read_json(folder / metrics_path(stage)).get(key), params, walls),
        "cpu": (run.get("machine") or {}).get("cpu"),
        **{f"params.{k}": v for k, v in params.items()},
    }

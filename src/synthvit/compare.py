"""`synthvit compare`: one table of experiments, to read a study at a glance.

    synthvit compare [--source mlflow|dvc] [--experiment NAME] [--filter "MLFLOW FILTER"]
                     [--last N] [--all] [--x params|wall] [--output-dir compare] [--force]
    synthvit compare --arms A B [--output-dir DIR]   two experiments side by side (compare_arms)

One row per pipeline execution: from MLflow (default), a parent run with its stage
runs; from DVC (`--source dvc`), an experiment in `dvc exp show --json` (and the
baseline commit when it has metrics): like `dvc exp show`, those of the current commit.
Columns: name, id, start time, the key params (model.name, finetune.init, data.name)
and every param that differs between the rows, test top-1 (evaluate), parameter count
(the fine-tuned model), wall seconds per stage and in total, and training img/s of
pretrain and finetune.

Wall time: from MLflow, each stage run's start to end, and for the total the parent
run's (first stage start to last stage end, so it includes loading and start-up); from
DVC, only the training time that metrics/{pretrain,finetune}.json record, total = their sum.

Writes comparison.csv, comparison.md (the table and the plot) and comparison.png
(test top-1 against parameters or total wall time, points labelled) into --output-dir.
The directory is the command's own: it refuses to replace files of those names that it
did not write (no marker file), unless --force.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from synthvit import tracking
from synthvit.errors import UserError
from synthvit.files import write_csv, write_text

STAGES = ["generate_synthetic", "pretrain", "finetune", "evaluate", "visualize"]
KEY_PARAMS = ["model.name", "finetune.init", "data.name"]
# Params that stages log as facts about their run, not as inputs: never a study's variable.
RESULT_PARAMS = {"model.num_parameters", "data.train_images", "data.num_classes"}
ID_COLUMNS = ["name", "id", "started", "status"]
RESULT_COLUMNS = ["test_top1", "parameters", *[f"wall_{s}_s" for s in STAGES], "wall_total_s",
                  "pretrain_img_per_s", "finetune_img_per_s"]
OUTPUT_NAMES = ("comparison.csv", "comparison.md", "comparison.png")
MARKER = ".synthvit-compare"  # says the output files in this folder were written by this command
X_AXES = {"params": ("parameters", "parameters (fine-tuned model)"), "wall": ("wall_total_s", "total wall time (s)")}


# ---- rows from MLflow ---------------------------------------------------------------


def open_mlflow_experiment(uri: str, name: str):
    """The experiment in the store at `uri`; a clear error when the store or experiment is missing."""
    import mlflow

    tracking.use_store(create=False, missing="cannot compare MLflow runs; run the pipeline first (dvc exp run), "
                       "or point MLFLOW_TRACKING_URI at your store")
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        names = [e.name for e in mlflow.search_experiments()]
        raise UserError(f"no MLflow experiment {name!r} in {uri}; experiments there: {', '.join(names) or 'none'}")
    return experiment


def search_runs(experiment_id: str, filter_string: str = "") -> pd.DataFrame:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.search_runs([experiment_id], filter_string=filter_string, output_format="pandas")
    except MlflowException as exc:
        raise UserError(f"--filter {filter_string!r} is not a valid MLflow search filter: {exc.message}") from None


def mlflow_rows(uri: str, experiment_name: str, filter_string: str = "") -> pd.DataFrame:
    """One row per pipeline execution (parent run) in the experiment, with all its stages' params."""
    experiment = open_mlflow_experiment(uri, experiment_name)
    runs = search_runs(experiment.experiment_id)
    if runs.empty or f"tags.{tracking.PIPELINE_TAG}" not in runs:
        raise UserError(f"no pipeline runs in MLflow experiment {experiment_name!r} ({uri}): run the pipeline first")
    parents = runs[runs[f"tags.{tracking.PIPELINE_TAG}"].notna()]
    parent_ids = parent_column(runs)
    if filter_string:
        # Stage runs hold the params and metrics a filter names: keep an execution when any of its runs matches.
        matched = search_runs(experiment.experiment_id, filter_string)
        keep = set(matched["run_id"]) | set(parent_column(matched).dropna()) if not matched.empty else set()
        parents = parents[parents["run_id"].isin(keep)]
    return pd.DataFrame([execution_row(parent, runs[parent_ids == parent["run_id"]]) for _, parent in parents.iterrows()])


def parent_column(runs: pd.DataFrame) -> pd.Series:
    """Each run's parent run id (missing when no run in the frame has a parent)."""
    return runs.get("tags.mlflow.parentRunId", pd.Series(None, index=runs.index, dtype=object))


def execution_row(parent: pd.Series, stages: pd.DataFrame) -> dict:
    # The latest run of each stage name (a stage re-run under one parent is not expected, but cheap to handle).
    by_stage = {run["tags.mlflow.runName"]: run for _, run in stages.sort_values("start_time").iterrows()}
    params = {}
    for stage in STAGES:  # pipeline order: finetune's facts (e.g. data.*) win over pretrain's
        if stage in by_stage:
            run = by_stage[stage]
            params.update({k[len("params."):]: v for k, v in run.items() if k.startswith("params.") and pd.notna(v)})

    def metric(stage: str, key: str):
        value = by_stage[stage].get(f"metrics.{key}") if stage in by_stage else None
        return value if value is not None and pd.notna(value) else None

    walls = {f"wall_{s}_s": seconds(by_stage[s]) for s in STAGES if s in by_stage}
    return {
        "name": parent.get("tags.dvc.exp_name") or parent.get("tags.mlflow.runName"),
        "id": parent["run_id"],
        "started": parent["start_time"],
        "status": parent["status"],
        **{k: v for k, v in params.items() if k not in RESULT_PARAMS},
        "test_top1": metric("evaluate", "top1"),
        "parameters": metric("finetune", "final_num_parameters"),
        **walls,
        "wall_total_s": seconds(parent),
        "pretrain_img_per_s": metric("pretrain", "final_train_images_per_s"),
        "finetune_img_per_s": metric("finetune", "final_train_images_per_s"),
    }


def seconds(run: pd.Series) -> float | None:
    if pd.isna(run["start_time"]) or pd.isna(run["end_time"]):
        return None  # still running
    return (run["end_time"] - run["start_time"]).total_seconds()


# ---- rows from DVC ------------------------------------------------------------------


def dvc_exp_show() -> list:
    """`dvc exp show --json` of the repository here, by the DVC of this environment.

    Not dvc.api.exp_show: in DVC 3.67 it returns the printed table's cells (7-character revs,
    "07:11 PM" creation times without a date, integers as floats, "!" for a missing metric),
    which lose the full rev, the date to order by and the params' types that this table needs.
    """
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise UserError(f"could not run dvc: {exc}") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise UserError(f"dvc exp show failed: {lines[-1] if lines else f'exit code {result.returncode}'}")
    return json.loads(result.stdout)


def dvc_rows(show: list) -> pd.DataFrame:
    """One row per experiment of `dvc exp show --json`, plus baseline commits that have test metrics."""
    rows = []
    for baseline in show:
        if baseline["rev"] == "workspace":  # holds whatever ran last: a duplicate or unsaved
            continue
        row = dvc_row(baseline, "success")
        if row["test_top1"] is not None:
            rows.append(row)
        for experiment in baseline.get("experiments") or []:
            # No executor: run in the workspace and saved, so it finished.
            state = (experiment.get("executor") or {}).get("state", "success")
            rows.extend(dvc_row(rev, state) for rev in experiment["revs"])
    return pd.DataFrame(rows)


def dvc_row(rev: dict, state: str) -> dict:
    data = rev.get("data") or {}
    params = {}
    for file, content in (data.get("params") or {}).items():
        flat = pd.json_normalize(content.get("data") or {}, sep=".").to_dict("records")
        prefix = "" if file == "params.yaml" else f"{file}:"
        params.update({f"{prefix}{k}": v for k, v in (flat[0] if flat else {}).items()})

    def metric(stage: str, key: str):
        return ((data.get("metrics") or {}).get(f"metrics/{stage}.json", {}).get("data") or {}).get(key)

    walls = {f"wall_{s}_s": metric(s, "wall_seconds") for s in ("pretrain", "finetune")}
    known = [w for w in walls.values() if w is not None]
    return {
        "name": rev.get("name") or rev["rev"][:7],
        "id": rev["rev"],
        "started": pd.Timestamp(data["timestamp"]) if data.get("timestamp") else None,
        "status": state,
        # As text, the way MLflow logs params (str(value)): both sources read the same, and a null depth
        # stays "None" instead of turning the column's integers into floats.
        **{k: str(v) for k, v in params.items()},
        "test_top1": metric("evaluate", "top1"),
        "parameters": metric("finetune", "num_parameters"),
        **walls,
        "wall_total_s": sum(known) if known else None,
        "pretrain_img_per_s": metric("pretrain", "train_images_per_s"),
        "finetune_img_per_s": metric("finetune", "train_images_per_s"),
    }


# ---- the table ----------------------------------------------------------------------


def select_rows(rows: pd.DataFrame, finished: str, include_all: bool, last: int | None) -> pd.DataFrame:
    """Finished rows (all with include_all), oldest first, the `last` most recent."""
    if not include_all:
        rows = rows[rows["status"] == finished]
    rows = rows.sort_values("started", kind="stable")
    return (rows.tail(last) if last else rows).reset_index(drop=True)


def differing_params(rows: pd.DataFrame) -> list[str]:
    params = [c for c in rows.columns if c not in ID_COLUMNS and c not in RESULT_COLUMNS]
    # Compared as text (MLflow params are strings). A missing value is unknown, not different: a stage that
    # DVC restored from its run cache logged no MLflow run, hence none of its params.
    return sorted(c for c in params if rows[c].dropna().astype(str).nunique() > 1)


def comparison_table(rows: pd.DataFrame, include_status: bool) -> pd.DataFrame:
    """Id columns, key params, the params that differ, then results (results no row has are dropped)."""
    ids = [c for c in ID_COLUMNS if c != "status" or include_status]
    params = KEY_PARAMS + [c for c in differing_params(rows) if c not in KEY_PARAMS]
    results = [c for c in RESULT_COLUMNS if c in rows and rows[c].notna().any()]
    table = rows.reindex(columns=ids + params + results)
    if "parameters" in table:
        table["parameters"] = table["parameters"].astype("Int64")
    return table


def markdown_table(table: pd.DataFrame) -> str:
    """The table with readable numbers: accuracy to 4 places, seconds and img/s to 1."""
    shown = table.copy()
    shown["id"] = shown["id"].str[:8]
    shown["started"] = pd.to_datetime(shown["started"]).dt.strftime("%Y-%m-%d %H:%M")
    for column in shown.columns:
        if column == "test_top1":
            shown[column] = shown[column].map(lambda v: f"{v:.4f}" if pd.notna(v) else "")
        elif column.endswith(("_s", "_per_s")):
            shown[column] = shown[column].map(lambda v: f"{v:.1f}" if pd.notna(v) else "")
    # Our formatting as written (tabulate would re-parse "0.5000" as 0.5); results right-aligned.
    align = ["right" if column in RESULT_COLUMNS else "left" for column in shown.columns]
    return shown.astype(object).fillna("").astype(str).to_markdown(index=False, disable_numparse=True, colalign=align)


# ---- outputs ------------------------------------------------------------------------


def check_output_dir(folder: Path, force: bool, names: tuple[str, ...] = OUTPUT_NAMES) -> None:
    """Refuse to replace same-named files this command did not write."""
    existing = [name for name in names if (folder / name).exists()]
    if existing and not (folder / MARKER).is_file() and not force:
        raise UserError(f"{folder} holds {', '.join(existing)} not written by synthvit compare: "
                        "choose another --output-dir, or --force to replace them")


def accuracy_plot(table: pd.DataFrame, x_axis: str, path: Path, title: str) -> Path:
    from synthvit import plots  # sets the Agg backend

    import matplotlib.pyplot as plt

    column, label = X_AXES[x_axis]
    points = table.dropna(subset=[column, "test_top1"]) if {column, "test_top1"} <= set(table) else table.iloc[0:0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if points.empty:
        ax.text(0.5, 0.5, f"no row has both test top-1 and {label}", ha="center", va="center", transform=ax.transAxes)
    else:
        x = points[column].astype(float)
        ax.scatter(x, points["test_top1"], zorder=3)
        # Runs at the same point share one label rather than overprinting each other.
        labels = points.assign(x=x, name=points["name"].astype(str)).groupby(["x", "test_top1"])["name"].agg(", ".join)
        for (xi, yi), names in labels.items():
            ax.annotate(names, (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if x.min() > 0 and x.max() / x.min() > 20:  # parameter counts of ViTs and CNNs span decades
            ax.set_xscale("log")
    ax.set(xlabel=label, ylabel="test top-1", title=title)
    ax.grid(alpha=0.3)
    return plots.save(fig, path)


def write_outputs(table: pd.DataFrame, folder: Path, x_axis: str, description: str) -> list[Path]:
    write_text(folder / MARKER, "Files here are written by `synthvit compare`, which replaces them on each run.\n")
    csv = write_csv(folder / "comparison.csv", table)
    png = accuracy_plot(table, x_axis, folder / "comparison.png", f"Test top-1 against {X_AXES[x_axis][1]}")
    text = f"# Experiment comparison\n\n{description}\n\n{markdown_table(table)}\n\n![accuracy against cost]({png.name})\n"
    md = write_text(folder / "comparison.md", text)
    return [csv, md, png]


# ---- the command --------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", choices=("mlflow", "dvc"), default="mlflow",
                        help="MLflow parent runs (default) or `dvc exp show --json`")
    parser.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment_name in params.yaml)")
    parser.add_argument("--filter", default="", help="MLflow search filter; keeps executions with a matching stage run, "
                        "e.g. \"params.`model.depth` = '6'\"")
    parser.add_argument("--last", type=int, metavar="N", help="only the N most recent executions")
    parser.add_argument("--all", action="store_true", help="include unfinished and failed runs, with a status column")
    parser.add_argument("--x", choices=tuple(X_AXES), default="params", help="x axis of the plot (default: params)")
    parser.add_argument("--output-dir", type=Path, default=Path("compare"), help="where the outputs go (default: compare/)")
    parser.add_argument("--force", action="store_true", help="replace same-named files not written by this command")
    parser.add_argument("--arms", nargs=2, metavar=("A", "B"), help="two DVC experiments side by side (table, "
                        "difference A - B, accuracy per epoch): what `make demo` ends with; see synthvit.compare_arms")


def default_experiment() -> str:
    from synthvit.config import load_params

    if Path("params.yaml").is_file():
        return load_params().tracking.experiment_name
    return "synthvit"


def run(args) -> int:
    if args.arms:
        from synthvit import compare_arms

        return compare_arms.run(args)
    if args.last is not None and args.last < 1:
        raise UserError(f"--last {args.last} is invalid: give a number of runs >= 1")
    check_output_dir(args.output_dir, args.force)
    if args.source == "dvc":
        if args.filter or args.experiment:
            raise UserError("--filter and --experiment select MLflow runs; with --source dvc leave them out")
        rows, finished = dvc_rows(dvc_exp_show()), "success"
        where = "DVC experiments (dvc exp show)"
    else:
        experiment = args.experiment or default_experiment()
        uri = tracking.tracking_uri()
        rows, finished = mlflow_rows(uri, experiment, args.filter), "FINISHED"
        where = f"MLflow experiment {experiment!r} ({uri})" + (f", filter {args.filter!r}" if args.filter else "")
    if rows.empty:
        raise UserError(f"no runs to compare in {where}" + ("" if args.filter else ": run the pipeline first (dvc exp run)"))
    rows = select_rows(rows, finished, args.all, args.last)
    if rows.empty:
        raise UserError(f"no {finished} runs to compare in {where} (--all shows the others)")
    table = comparison_table(rows, include_status=args.all)
    description = f"{len(table)} runs from {where}. test_top1: evaluate stage; wall: " + (
        "training seconds from metrics/*.json." if args.source == "dvc" else "seconds per stage run, total = parent run.")
    paths = write_outputs(table, args.output_dir, args.x, description)
    print(markdown_table(table))
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0

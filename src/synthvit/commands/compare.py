"""`synthvit compare`: one table of experiments, to read a study at a glance.

    synthvit compare [--source mlflow|dvc] [--experiment NAME] [--filter "MLFLOW FILTER"]
                     [--last N] [--all] [--x params|wall] [--output-dir compare] [--force]
    synthvit compare --arms A B [--output-dir DIR]   two experiments side by side (arms.py)

One row per pipeline execution: from MLflow (default), a parent run with its stage
runs; from DVC (`--source dvc`), an experiment in `dvc exp show --json` (and the
baseline commit when it has metrics): like `dvc exp show`, those of the current commit.
Columns: name, id, start time, the key params (model.name, finetune.init, data.name)
and every param that differs between the rows, test top-1 (evaluate), parameter count
(the fine-tuned model), wall seconds per stage and in total, and training img/s of
pretrain and finetune.

Writes comparison.csv, comparison.md (the table and the plot) and comparison.png
(test top-1 against parameters or total wall time, points labelled) into --output-dir.
The directory is the command's own: it refuses to replace files of those names that it
did not write (no marker file), unless --force.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from synthvit.commands import arms
from synthvit.commands.comparison import (
    X_AXES,
    check_output_dir,
    comparison_table,
    default_experiment,
    dvc_rows,
    fit_width,
    mlflow_rows,
    named,
    seed_table,
    select_rows,
    write_outputs,
)
from synthvit.commands.experiments import dvc_exp_show
from synthvit.errors import UserError
from synthvit.tracking.store import get_experiment_id, open_client, tracking_uri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        choices=("mlflow", "dvc"),
        default="mlflow",
        help="MLflow parent runs (default) or `dvc exp show --json`",
    )
    parser.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment_name in params.yaml)")
    parser.add_argument(
        "--filter",
        default="",
        help="MLflow search filter; keeps executions with a matching stage run, e.g. \"params.`model.depth` = '6'\"",
    )
    parser.add_argument("--last", type=int, metavar="N", help="only the N most recent executions")
    parser.add_argument("--all", action="store_true", help="include unfinished and failed runs, with a status column")
    parser.add_argument("--names", metavar="PATTERN", help="only experiments whose name matches, e.g. 'proof-*'")
    parser.add_argument(
        "--over-seeds",
        action="store_true",
        help="one row per experiment name without its -s<seed> "
        "suffix: mean ± sd over the seeds (the table `make proof` prints)",
    )
    parser.add_argument(
        "--x",
        choices=tuple(X_AXES),
        default="params",
        help="x axis of the plot (default: params; pretrain: against the pre-training epochs, with --over-seeds)",
    )
    parser.add_argument("--log", action="store_true", help="also log the outputs to MLflow, as a run of their own")
    parser.add_argument(
        "--output-dir", type=Path, default=Path("compare"), help="where the outputs go (default: compare/)"
    )
    parser.add_argument("--force", action="store_true", help="replace same-named files not written by this command")
    parser.add_argument(
        "--arms",
        nargs=2,
        metavar=("A", "B"),
        help="two DVC experiments side by side (table, "
        "difference A - B, accuracy per epoch): what `make demo` ends with; see commands/arms.py",
    )


def run(args) -> int:
    if args.arms:
        return arms.run(args)
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
        uri = tracking_uri()
        rows, finished = mlflow_rows(uri, experiment, args.filter), "FINISHED"
        where = f"MLflow experiment {experiment!r} ({uri})" + (f", filter {args.filter!r}" if args.filter else "")
    if rows.empty:
        raise UserError(
            f"no runs to compare in {where}" + ("" if args.filter else ": run the pipeline first (dvc exp run)")
        )
    rows = select_rows(rows, finished, args.all, args.last)
    if args.names:
        rows = named(rows, args.names)
        where += f", named {args.names}"
    if rows.empty:
        raise UserError(f"no {finished} runs to compare in {where} (--all shows the others)")
    table = seed_table(rows) if args.over_seeds else comparison_table(rows, include_status=args.all)
    description = f"{len(table)} runs from {where}. test_top1: evaluate stage; wall: " + (
        "seconds per stage from metrics/timing/*.json."
        if args.source == "dvc"
        else "seconds per stage run, total = parent run."
    )
    paths = write_outputs(table, args.output_dir, args.x, description, seeds=args.over_seeds)
    print(fit_width(table))
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    if args.log:
        print(f"logged to MLflow run {log_comparison(paths, args.names or 'all', args.experiment)}")
    return 0


def log_comparison(paths: list[Path], label: str, experiment: str | None) -> str:
    """A run of the experiment that holds a comparison's outputs (tagged synthvit.comparison); its id."""
    uri = tracking_uri()
    client = open_client(uri)
    experiment_id = get_experiment_id(client, uri, experiment or default_experiment())
    run = client.create_run(experiment_id, run_name=f"comparison {label}", tags={"synthvit.comparison": "true"})
    for path in paths:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id

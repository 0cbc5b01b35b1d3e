"""`synthvit compare`: one table of experiments, to read a study at a glance; or arms side by side.

    synthvit compare [--source mlflow|dvc] [--experiment NAME] [--filter "MLFLOW FILTER"] [--names PATTERN]
                     [--last N] [--all] [--over-seeds] [--x params|wall|pretrain] [--output-dir compare] [--force]
                     [--log]
    synthvit compare --arms A B [C ...] [--output-dir DIR]    what `make demo` ends with

One row per pipeline execution (reporting/sources.py): from MLflow (default), a parent run and
its stage runs; from DVC (`--source dvc`), an experiment of `dvc exp show --json`. Columns: name,
id, start, the key params and every param that differs between the rows, then the results (test
top-1 and ECE, held-out accuracies, parameters, wall seconds per stage and in total, training
rates). Writes comparison.csv, comparison.md and comparison.png (test top-1 against parameters,
wall time or pre-training epochs) into --output-dir; `--log` also makes them one MLflow run.

`--arms` reads each named DVC experiment (from DVC's cache: a restored stage reads like one that
ran): test top-1, top-5 and ECE on the whole test split, the pre-training's held-out accuracy
when the arm starts from it, wall seconds; then the first arm minus each other. The figure: the
pre-training curves beside each arm's accuracy per fine-tuning epoch, ending at its whole-test
score. Writes arms.{csv,md,png} and logs one MLflow run holding them at the top of its artifacts
and the differences as metrics (`test_top1 A - B`), so MLflow's compare view shows the answer.

An output folder is the command's own: it refuses to replace same-named files it did not write
(no marker file), unless --force.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from synthvit.commands.reporting import figures, tables
from synthvit.commands.reporting.sources import Experiment, dvc_exp_show, dvc_rows, experiment_revs, mlflow_rows
from synthvit.config import load_params
from synthvit.errors import UserError
from synthvit.evaluation import plots
from synthvit.files import write_csv, write_text
from synthvit.tracking import summary
from synthvit.tracking.store import get_experiment_id, open_client, sqlite_path, tracking_uri

MARKER = ".synthvit-compare"  # says the output files in this folder were written by this command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--source", choices=("mlflow", "dvc"), default="mlflow", help="MLflow parent runs (default) or DVC experiments")
    add("--experiment", help="MLflow experiment (default: tracking.experiment_name in params.yaml)")
    add(
        "--filter",
        default="",
        help="MLflow search filter; keeps executions with a matching stage run, e.g. \"params.`model.depth` = '6'\"",
    )
    add("--last", type=int, metavar="N", help="only the N most recent executions")
    add("--all", action="store_true", help="include unfinished and failed runs, with a status column")
    add("--names", metavar="PATTERN", help="only experiments whose name matches, e.g. 'study-*'")
    add("--over-seeds", action="store_true", help="one row per name without its -s<seed> suffix: mean ± sd")
    add("--x", choices=tuple(figures.X_AXES), default="params", help="x axis of the plot (pretrain: with --over-seeds)")
    add("--log", action="store_true", help="also log the outputs to MLflow, as a run of their own")
    add("--output-dir", type=Path, default=Path("compare"), help="where the outputs go (default: compare/)")
    add("--force", action="store_true", help="replace same-named files not written by this command")
    add("--arms", nargs="+", metavar="EXPERIMENT", help="DVC experiments side by side, the first minus each other")


def default_experiment() -> str:
    return load_params().tracking.experiment_name if Path("params.yaml").is_file() else "synthvit"


def claim_output_dir(folder: Path, stem: str, force: bool) -> None:
    """Refuse to replace same-named files (`stem`.csv, .md, .png) this command did not write; then mark the
    folder as its own."""
    existing = [name for name in (f"{stem}.csv", f"{stem}.md", f"{stem}.png") if (folder / name).exists()]
    if existing and not (folder / MARKER).is_file() and not force:
        raise UserError(
            f"{folder} holds {', '.join(existing)} not written by synthvit compare: "
            "choose another --output-dir, or --force to replace them"
        )
    write_text(folder / MARKER, "Files here are written by `synthvit compare`, which replaces them on each run.\n")


def write_outputs(folder: Path, stem: str, table: pd.DataFrame, printed: str, document: str, figure) -> list[Path]:
    """Print the table (`printed`); write it, its Markdown document and its figure as `stem`.csv, .md and .png;
    say where they went."""
    print(printed)
    paths = [
        write_csv(folder / f"{stem}.csv", table),
        write_text(folder / f"{stem}.md", document),
        plots.save(figure, folder / f"{stem}.png"),
    ]
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return paths


def log_comparison(paths: list[Path], name: str, metrics: dict | None = None, params: dict | None = None):
    """One MLflow run holding a comparison: its files at the top of the artifacts (MLflow's compare view
    shows only those), its differences as metrics. Returns the run's info (run_id, experiment_id)."""
    uri = tracking_uri()
    client = open_client(uri)
    experiment_id = get_experiment_id(client, uri, default_experiment())
    run = client.create_run(experiment_id, run_name=f"comparison: {name}", tags={"synthvit.comparison": "true"})
    run_id = run.info.run_id
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    for key, value in (metrics or {}).items():
        if pd.notna(value):
            client.log_metric(run_id, key, float(value))
    for path in paths:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run.info


def run(args) -> int:
    if args.arms:
        return compare_arms(args)
    if args.last is not None and args.last < 1:
        raise UserError(f"--last {args.last} is invalid: give a number of runs >= 1")
    claim_output_dir(args.output_dir, "comparison", args.force)
    if args.source == "dvc":
        if args.filter or args.experiment:
            raise UserError("--filter and --experiment select MLflow runs; with --source dvc leave them out")
        rows, finished, where = dvc_rows(dvc_exp_show()), "success", "DVC experiments (dvc exp show)"
    else:
        experiment, uri = args.experiment or default_experiment(), tracking_uri()
        rows, finished = mlflow_rows(uri, experiment, args.filter), "FINISHED"
        where = f"MLflow experiment {experiment!r} ({uri})" + (f", filter {args.filter!r}" if args.filter else "")
    if rows.empty:
        raise UserError(f"no runs to compare in {where}" + ("" if args.filter else ": run the pipeline first"))
    rows = tables.select_rows(rows, finished, args.all, args.last)
    if args.names:
        rows, where = tables.named(rows, args.names), f"{where}, named {args.names}"
    if rows.empty:
        raise UserError(f"no {finished} runs to compare in {where} (--all shows the others)")
    table = tables.seed_table(rows) if args.over_seeds else tables.comparison_table(rows, include_status=args.all)
    walls = "seconds per stage (timing files)" if args.source == "dvc" else "seconds per stage run, total = parent run"
    if args.over_seeds:
        budget = " against the pre-training epochs" if args.x == "pretrain" else ""
        figure = figures.seed_plot(table, args.x, f"Test top-1 over seeds{budget}")
    else:
        figure = figures.accuracy_plot(table, args.x, f"Test top-1 against {figures.X_AXES[args.x][1]}")
    markdown = tables.markdown_table(table, percent=args.over_seeds)
    document = (
        f"# Experiment comparison\n\n{len(table)} runs from {where}. "
        f"test_top1: evaluate stage; wall: {walls}.\n\n{markdown}\n\n![accuracy](comparison.png)\n"
    )
    paths = write_outputs(args.output_dir, "comparison", table, tables.fit_width(table), document, figure)
    if args.log:
        print(f"logged to MLflow run {log_comparison(paths, args.names or 'all').run_id}")
    return 0


# ---- arms ---------------------------------------------------------------------------

ARM_COLUMNS = {
    "test_top1": "test top-1",
    "test_top5": "top-5",
    "test_ece": "ECE",
    "pretrain_heldout_acc": "pre-train acc",  # on held-out fractal instances
    "wall_pretrain_s": "pre-train s",
    "wall_finetune_s": "fine-tune s",
    "cost_s": "all stages s",
}


def arm_row(label: str, experiment: Experiment) -> dict:
    row = experiment.row()  # its walls and cost: only what the arm needed (sources.needed)
    return {
        "arm": label,
        "experiment": experiment.name,
        "init": row.get("finetune.init"),
        **{key: row.get(key) for key in ARM_COLUMNS if key != "cost_s"},
        "cost_s": row["wall_total_s"],
        "test_images": experiment.metrics("evaluate").get("num_images"),
    }


def arms_table(rows: list[dict]) -> pd.DataFrame:
    """One row per arm, then the first arm minus each other (`A - B`, `A - C`)."""
    table = pd.DataFrame(rows)
    numbers = table[list(ARM_COLUMNS)].astype(float)  # a missing value (None) as NaN: its difference is NaN too
    differences = (numbers.iloc[0] - numbers.iloc[1:]).assign(
        arm=[f"{table['arm'][0]} - {other}" for other in table["arm"][1:]], experiment="", init=""
    )
    return pd.concat([table, differences], ignore_index=True)


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as shown: short arm labels (the legend names the experiments), readable headers."""
    return table[["arm", "init", *ARM_COLUMNS]].rename(columns=ARM_COLUMNS)


def legend(table: pd.DataFrame) -> str:
    return "   ".join(f"{row.arm} = {row.experiment}" for row in table.itertuples() if row.experiment)


def compare_arms(args) -> int:
    names = args.arms
    if len(names) < 2 or len(set(names)) < len(names):
        raise UserError(f"--arms needs two or more different experiments, got {' '.join(names)}")
    if args.source == "dvc" or args.filter or args.last or args.all:
        raise UserError("--arms names its experiments: leave out --source, --filter, --last and --all")
    claim_output_dir(args.output_dir, "arms", args.force)
    revs = experiment_revs()
    arms = [(chr(ord("A") + i), Experiment.named(name, revs)) for i, name in enumerate(names)]
    table = arms_table([arm_row(label, experiment) for label, experiment in arms])
    title = " against ".join(names)
    markdown = tables.markdown_table(display(table), percent=True)
    document = f"# {title}\n\n{markdown}\n\n{legend(table)}\n\n![accuracy per epoch](arms.png)\n"
    printed = f"{tables.fit_width(display(table))}\n{legend(table)}"
    paths = write_outputs(args.output_dir, "arms", table, printed, document, figures.arms_figure(arms, table))
    uri = tracking_uri()
    if sqlite_path(uri) is None or sqlite_path(uri).is_file():  # a store the pipeline wrote to: one run in it
        differences = table[len(arms) :]
        metrics = {f"{key} {row['arm']}": row[key] for _, row in differences.iterrows() for key in ARM_COLUMNS}
        params = {f"arm.{label}": f"{e.name} ({e.param('finetune.init')})" for label, e in arms}
        run = log_comparison(paths, title, metrics, params)
        serve = "" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}, then open "
        print(
            f"MLflow: run {run.run_id} holds this comparison (its differences as metrics); "
            f"{serve}{summary.ui_url(uri, run.experiment_id)}"
        )
    return 0

"""The rows and tables of `synthvit compare`: one row per pipeline execution, read from MLflow or DVC.

One row per pipeline execution: from MLflow (default), a parent run with its stage
runs; from DVC (`--source dvc`), an experiment in `dvc exp show --json` (and the
baseline commit when it has metrics): like `dvc exp show`, those of the current commit.
Columns: name, id, start time, the key params (model.name, finetune.init, data.name)
and every param that differs between the rows, test top-1 (evaluate), parameter count
(the fine-tuned model), wall seconds per stage and in total, and training img/s of
pretrain and finetune.

Wall time: from MLflow, each stage run's start to end, and for the total the parent
run's (first stage start to last stage end, so it includes loading and start-up); from
DVC, each stage's timing file (metrics/timing/<stage>.json: its process's wall time),
total = their sum.

Writes comparison.csv, comparison.md (the table and the plot) and comparison.png
(test top-1 against parameters or total wall time, points labelled) into --output-dir.
The directory is the command's own: it refuses to replace files of those names that it
did not write (no marker file), unless --force.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from synthvit.commands.experiments import STAGES, Experiment
from synthvit.config import load_params
from synthvit.errors import UserError
from synthvit.evaluation import plots
from synthvit.evaluation.plots import plt
from synthvit.files import write_csv, write_text
from synthvit.tracking.store import PIPELINE_TAG, use_store

KEY_PARAMS = ["model.name", "finetune.init", "data.name"]
# Params that stages log as facts about their run, not as inputs: never a study's variable.
RESULT_PARAMS = {"model.num_parameters", "data.train_images", "data.num_classes"}
ID_COLUMNS = ["name", "id", "started", "status"]
RESULT_COLUMNS = [
    "test_top1",
    "test_ece",
    "pretrain_train_acc",
    "parameters",
    *[f"wall_{s}_s" for s in STAGES],
    "wall_total_s",
    "pretrain_img_per_s",
    "finetune_img_per_s",
]
OUTPUT_NAMES = ("comparison.csv", "comparison.md", "comparison.png")
MARKER = ".synthvit-compare"  # says the output files in this folder were written by this command
X_AXES = {
    "params": ("parameters", "parameters (fine-tuned model)"),
    "wall": ("wall_total_s", "total wall time (s)"),
    "pretrain": ("pretrain_epochs", "pre-training epochs (0: from scratch)"),
}
SEED_SUFFIX = re.compile(r"-s\d+$")  # experiments named <row>-s<seed>: one table row, several seeds


# ---- rows from MLflow ---------------------------------------------------------------


def open_mlflow_experiment(uri: str, name: str):
    """The experiment in the store at `uri`; a clear error when the store or experiment is missing."""
    use_store(
        create=False,
        missing="cannot compare MLflow runs; run the pipeline first (dvc exp run), "
        "or point MLFLOW_TRACKING_URI at your store",
    )
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        names = [e.name for e in mlflow.search_experiments()]
        raise UserError(f"no MLflow experiment {name!r} in {uri}; experiments there: {', '.join(names) or 'none'}")
    return experiment


def search_runs(experiment_id: str, filter_string: str = "") -> pd.DataFrame:
    try:
        return mlflow.search_runs([experiment_id], filter_string=filter_string, output_format="pandas")
    except MlflowException as exc:
        raise UserError(f"--filter {filter_string!r} is not a valid MLflow search filter: {exc.message}") from None


def mlflow_rows(uri: str, experiment_name: str, filter_string: str = "") -> pd.DataFrame:
    """One row per pipeline execution (parent run) in the experiment, with all its stages' params."""
    experiment = open_mlflow_experiment(uri, experiment_name)
    runs = search_runs(experiment.experiment_id)
    if runs.empty or f"tags.{PIPELINE_TAG}" not in runs:
        raise UserError(f"no pipeline runs in MLflow experiment {experiment_name!r} ({uri}): run the pipeline first")
    parents = runs[runs[f"tags.{PIPELINE_TAG}"].notna()]
    parent_ids = parent_column(runs)
    if filter_string:
        # Stage runs hold the params and metrics a filter names: keep an execution when any of its runs matches.
        matched = search_runs(experiment.experiment_id, filter_string)
        keep = set(matched["run_id"]) | set(parent_column(matched).dropna()) if not matched.empty else set()
        parents = parents[parents["run_id"].isin(keep)]
    return pd.DataFrame(
        [execution_row(parent, runs[parent_ids == parent["run_id"]]) for _, parent in parents.iterrows()]
    )


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
            params.update({k[len("params.") :]: v for k, v in run.items() if k.startswith("params.") and pd.notna(v)})

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
        "test_ece": metric("evaluate", "ece"),
        "pretrain_train_acc": metric("pretrain", "final_train_acc")
        if params.get("finetune.init") == "pretrained"
        else None,
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

    # Wall time and throughput are in the stages' timing files (no stage depends on them, so DVC does not show them).
    experiment = Experiment(rev.get("name") or rev["rev"], rev["rev"])
    timings = {stage: experiment.timing(stage) for stage in STAGES} if state == "success" else {}
    walls = {f"wall_{s}_s": t.get("wall_seconds") for s, t in timings.items() if t}
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
        "test_ece": metric("evaluate", "ece"),
        "pretrain_train_acc": metric("pretrain", "train_acc")
        if str(params.get("finetune.init")) == "pretrained"
        else None,
        "parameters": metric("finetune", "num_parameters"),
        **walls,
        "wall_total_s": sum(known) if known else None,
        "pretrain_img_per_s": timings.get("pretrain", {}).get("train_images_per_s"),
        "finetune_img_per_s": timings.get("finetune", {}).get("train_images_per_s"),
    }


# ---- the table ----------------------------------------------------------------------


def select_rows(rows: pd.DataFrame, finished: str, include_all: bool, last: int | None) -> pd.DataFrame:
    """Finished rows (all with include_all), oldest first, the `last` most recent."""
    if not include_all:
        rows = rows[rows["status"] == finished]
    rows = rows.sort_values("started", kind="stable")
    return (rows.tail(last) if last else rows).reset_index(drop=True)


def named(rows: pd.DataFrame, patterns: str) -> pd.DataFrame:
    """The rows whose name matches one of the comma-separated shell patterns (`proof-*,demo-*`)."""
    wanted = patterns.split(",")
    keep = rows["name"].astype(str).map(lambda name: any(fnmatch.fnmatchcase(name, p) for p in wanted))
    return rows[keep].reset_index(drop=True)


def with_derived(rows: pd.DataFrame) -> pd.DataFrame:
    """Columns the plots and seed tables use: the table row (the name without a -s<seed> suffix) and
    the pre-training epochs the fine-tuned model started from (0 from scratch)."""
    pretrained = rows.get("finetune.init", pd.Series("", index=rows.index)).astype(str) == "pretrained"
    epochs = pd.to_numeric(rows.get("pretrain.epochs", pd.Series(None, index=rows.index)), errors="coerce")
    return rows.assign(
        row=rows["name"].astype(str).map(lambda name: SEED_SUFFIX.sub("", name)),
        pretrain_epochs=epochs.where(pretrained, 0),
    )


def seed_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment row over its seeds: the params that tell rows apart, then each result's
    mean +- sd (test top-1, ECE, pre-training accuracy) and the mean wall time."""
    rows = with_derived(rows)
    constant = [
        c
        for c in differing_params(rows)
        if c not in ("seed", "row", "pretrain_epochs") and rows.groupby("row")[c].nunique().max() <= 1
    ]
    table = over_seeds(
        rows,
        "row",
        ["test_top1", "test_ece", "pretrain_train_acc", "wall_total_s"],
        order=list(dict.fromkeys(rows["row"])),
    )
    firsts = rows.groupby("row", sort=False)[[*constant, "pretrain_epochs"]].first().reset_index()
    table = firsts.merge(table, on="row")
    return table.drop(columns=[c for c in table.columns if c.startswith("wall_total_s sd")])


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


def over_seeds(rows: pd.DataFrame, by: str, metrics: list[str], order: list[str] | None = None) -> pd.DataFrame:
    """One row per value of `by` (a table row run with several seeds): how many seeds, and each
    metric's mean and sample sd (`<metric> mean`, `<metric> sd`; sd is empty for one seed)."""
    groups = []
    for label, group in rows.groupby(by, sort=False):
        entry = {by: label, "seeds": len(group)}
        for metric in metrics:
            values = group[metric].dropna().astype(float) if metric in group else pd.Series(dtype=float)
            entry[f"{metric} mean"] = values.mean() if len(values) else None
            entry[f"{metric} sd"] = values.std(ddof=1) if len(values) > 1 else None
        groups.append(entry)
    table = pd.DataFrame(groups)
    if order:
        rank = {label: i for i, label in enumerate(order)}
        position = table[by].map(lambda label: rank.get(label, len(rank)))
        table = (
            table.assign(_position=position).sort_values("_position").drop(columns="_position").reset_index(drop=True)
        )
    return table


# How a column is shown: accuracies as percentages, calibration errors to 3 places, seconds to 0.
PERCENT_WORDS = ("top1", "top5", "top-1", "top-5", "acc", "difference")


def cell(column: str, value, percent: bool) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, str):
        return value
    name = column.lower().removesuffix(" mean")  # a mean without its sd column is shown as its metric
    if "ece" in name:
        return f"{value:.3f}"
    if any(word in name for word in PERCENT_WORDS):
        sign = "+" if "difference" in name and value > 0 else ""
        return f"{sign}{100 * value:.2f}%" if percent else f"{value:.4f}"
    if name.endswith("_per_s"):  # before "_s": a rate, not seconds
        return f"{value:.1f}"
    if name.endswith(("_s", " s", "seconds")):
        return f"{value:.0f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def shown(table: pd.DataFrame, percent: bool = False) -> pd.DataFrame:
    """The table as text cells: `X mean` and `X sd` merged into `X` (mean +- sd), numbers formatted by kind."""
    out = {}
    for column in table.columns:
        if column.endswith(" sd") and f"{column[:-3]} mean" in table:
            continue
        if column.endswith(" mean") and f"{column[:-5]} sd" in table:
            metric = column[:-5]
            means, sds = table[column], table[f"{metric} sd"]
            out[metric] = [
                cell(metric, m, percent) + (f" ± {cell(metric, d, percent)}" if pd.notna(d) else "")
                for m, d in zip(means, sds)
            ]
            continue
        values = table[column]
        if column == "id":
            values = values.astype(str).str[:8]
        elif column == "started":
            values = pd.to_datetime(values).dt.strftime("%Y-%m-%d %H:%M")
        out[column] = [cell(column, v, percent) for v in values]
    return pd.DataFrame(out, index=table.index)


def markdown_table(table: pd.DataFrame, percent: bool = False) -> str:
    """The table in Markdown with readable numbers; text columns left-aligned, numbers right-aligned."""
    cells = shown(table, percent)
    # Text is object or (pandas 3) str dtype; a merged `X` (mean ± sd) column is a number.
    numeric = [pd.api.types.is_numeric_dtype(table[c]) if c in table else True for c in cells.columns]
    align = ["right" if is_number else "left" for is_number in numeric]
    # Our formatting as written (tabulate would re-parse "0.5000" as 0.5).
    return cells.to_markdown(index=False, disable_numparse=True, colalign=align)


def fit_width(table: pd.DataFrame, width: int = 120, percent: bool = True) -> str:
    """The table as plain text no wider than `width` columns: long cells are shortened, and the
    right-most parameter columns that still do not fit are left out (named below the table)."""
    cells = shown(table, percent)
    cells = cells.map(lambda text: text if len(text) <= 40 else text[:19] + "…" + text[-20:])
    dropped = []

    def render(frame: pd.DataFrame) -> str:
        return frame.to_markdown(index=False, tablefmt="simple", disable_numparse=True)

    text = render(cells)
    droppable = [c for c in cells.columns if "." in c]  # params (dotted keys), never the results
    while max(map(len, text.splitlines())) > width and droppable:
        dropped.append(droppable.pop())
        text = render(cells.drop(columns=dropped))
    if dropped:
        text += f"\n(left out to fit {width} columns: {', '.join(reversed(dropped))}; see the CSV)"
    return text


# ---- outputs ------------------------------------------------------------------------


def check_output_dir(folder: Path, force: bool, names: tuple[str, ...] = OUTPUT_NAMES) -> None:
    """Refuse to replace same-named files this command did not write."""
    existing = [name for name in names if (folder / name).exists()]
    if existing and not (folder / MARKER).is_file() and not force:
        raise UserError(
            f"{folder} holds {', '.join(existing)} not written by synthvit compare: "
            "choose another --output-dir, or --force to replace them"
        )


def mark_output_dir(folder: Path) -> None:
    """Say that the output files in `folder` are this command's (check_output_dir lets it replace them)."""
    write_text(folder / MARKER, "Files here are written by `synthvit compare`, which replaces them on each run.\n")


def accuracy_plot(table: pd.DataFrame, x_axis: str, title: str):
    """Test top-1 against parameters or total wall time, points labelled with their runs' names."""
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
    return fig


def seed_plot(table: pd.DataFrame, x_axis: str, title: str):
    """Test top-1 mean +- sd over seeds: one bar per row, or against the pre-training budget (`--x pretrain`)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    mean, sd = table["test_top1 mean"].astype(float), table["test_top1 sd"].astype(float).fillna(0)
    if x_axis == "pretrain":
        x = table["pretrain_epochs"].astype(float)
        order = x.argsort()
        ax.errorbar(x.iloc[order], mean.iloc[order], yerr=sd.iloc[order], marker="o", capsize=4)
        for xi, yi, label in zip(x, mean, table["row"]):
            ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(5, -12), fontsize=8)
        ax.set(xlabel=X_AXES["pretrain"][1], ylabel="test top-1 (mean ± sd over seeds)")
    else:
        positions = range(len(table))
        ax.barh(list(positions), mean, xerr=sd, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_yticks(list(positions), table["row"])
        ax.invert_yaxis()
        low = max(0.0, float((mean - sd).min()) - 0.05)
        ax.set(xlabel="test top-1 (mean ± sd over seeds)", xlim=(low, min(1.0, float((mean + sd).max()) + 0.03)))
        for position, (m, d) in enumerate(zip(mean, sd)):
            ax.annotate(
                f"{100 * m:.1f} ± {100 * d:.1f}",
                (m + d, position),
                textcoords="offset points",
                xytext=(4, -3),
                fontsize=8,
            )
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig


def write_outputs(table: pd.DataFrame, folder: Path, x_axis: str, description: str, seeds: bool = False) -> list[Path]:
    mark_output_dir(folder)
    csv = write_csv(folder / "comparison.csv", table)
    if seeds:
        budget = " against the pre-training budget" if x_axis == "pretrain" else ""
        figure = seed_plot(table, x_axis, f"Test top-1 over seeds{budget}")
    else:
        figure = accuracy_plot(table, x_axis, f"Test top-1 against {X_AXES[x_axis][1]}")
    png = plots.save(figure, folder / "comparison.png")
    text = (
        f"# Experiment comparison\n\n{description}\n\n{markdown_table(table, percent=seeds)}\n\n"
        f"![accuracy against cost]({png.name})\n"
    )
    md = write_text(folder / "comparison.md", text)
    return [csv, md, png]


# ---- the command --------------------------------------------------------------------


def default_experiment() -> str:
    if Path("params.yaml").is_file():
        return load_params().tracking.experiment_name
    return "synthvit"

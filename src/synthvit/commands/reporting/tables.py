"""Tables of rows (sources.py): which rows, which columns, over seeds, paired differences, and text.

Over seeds: a table row is a name without its `-s<seed>` suffix, each metric its mean and sample
sd. Paired: arms run with the same fine-tuning seeds differ seed by seed; the mean of those
differences gets its 95% interval (Student's t, n - 1 degrees of freedom).
"""

from __future__ import annotations

import fnmatch
import re

import pandas as pd
from scipy import stats

from synthvit.commands.reporting.sources import RESULTS
from synthvit.files import from_pipeline_pretraining

ID_COLUMNS = ["name", "id", "started", "status"]
KEY_PARAMS = ["model.name", "finetune.init", "data.name"]
SEED_SUFFIX = re.compile(r"-s\d+$")


def select_rows(rows: pd.DataFrame, finished: str, include_all: bool, last: int | None) -> pd.DataFrame:
    """Finished rows (all with include_all), oldest first, the `last` most recent."""
    rows = (rows if include_all else rows[rows["status"] == finished]).sort_values("started", kind="stable")
    return (rows.tail(last) if last else rows).reset_index(drop=True)


def named(rows: pd.DataFrame, patterns: str) -> pd.DataFrame:
    """The rows whose name matches one of the comma-separated shell patterns (`study-*,demo-*`)."""
    keep = rows["name"].astype(str).map(lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns.split(",")))
    return rows[keep].reset_index(drop=True)


RESULT_COLUMNS = {*RESULTS, "val_top1", "curve_top1", "wall_total_s"}


def is_param(column: str) -> bool:
    """A params key of a row, as opposed to its ids and results (sources.result_columns)."""
    results = column in RESULT_COLUMNS or column.startswith("wall_") or column.endswith("_img_per_s")
    return not results and column not in ID_COLUMNS and column not in ("row", "pretrain_epochs")


def differing_params(rows: pd.DataFrame) -> list[str]:
    """Params whose values differ between rows, compared as text (MLflow params are). A missing value is
    unknown, not different: a stage DVC restored from its run cache logged no MLflow run."""
    return sorted(c for c in rows.columns if is_param(c) and rows[c].dropna().astype(str).nunique() > 1)


def comparison_table(rows: pd.DataFrame, include_status: bool) -> pd.DataFrame:
    """Id columns, key params, the params that differ, then the results some row has."""
    ids = [c for c in ID_COLUMNS if c != "status" or include_status]
    params = KEY_PARAMS + [c for c in differing_params(rows) if c not in KEY_PARAMS]
    results = [c for c in rows.columns if c not in ids + ID_COLUMNS and not is_param(c) and rows[c].notna().any()]
    table = rows.reindex(columns=ids + params + results)
    return table.astype({"parameters": "Int64"}) if "parameters" in table else table


def over_seeds(rows: pd.DataFrame, by: str, metrics: list[str], order: list[str] | None = None) -> pd.DataFrame:
    """One row per value of `by`: how many seeds, each metric's `<metric> mean` and `<metric> sd`. No sd
    where every seed holds the same value: one measurement the seeds share (e.g. their one pre-training)."""
    numbers = rows.reindex(columns=metrics).apply(pd.to_numeric, errors="coerce").assign(**{by: rows[by]})
    groups = numbers.groupby(by, sort=False)
    table = groups[metrics].agg(["mean", lambda values: values.std() if values.nunique() > 1 else None])
    table.columns = [f"{metric} {'mean' if kind == 'mean' else 'sd'}" for metric, kind in table.columns]
    table.insert(0, "seeds", groups.size())
    rank = {label: i for i, label in enumerate(order or [])}  # rows `order` leaves out: after, as they come
    table = table.reset_index().sort_values(by, key=lambda labels: labels.map(rank).fillna(len(rank)), kind="stable")
    return table.reset_index(drop=True)


def own_pretraining(rows: pd.DataFrame, prefix: str = "") -> pd.Series:
    """Per row: whether it fine-tuned from the pipeline's own pre-training (files.from_pipeline_pretraining);
    `prefix`: where the params columns start ("params." in locked rows)."""
    inits = rows.get(f"{prefix}finetune.init", pd.Series("", index=rows.index))
    backbones = rows.get(f"{prefix}finetune.backbone", pd.Series(None, index=rows.index))
    return pd.Series([from_pipeline_pretraining(i, b) for i, b in zip(inits, backbones)], index=rows.index)


def seed_table(rows: pd.DataFrame) -> pd.DataFrame:
    """`compare --over-seeds`: per row (name without -s<seed>), the params constant within it that differ
    between rows, the pre-training epochs it started from (0 from scratch), then results over seeds."""
    pretrained = own_pretraining(rows)
    epochs = pd.to_numeric(rows.get("pretrain.epochs", pd.Series(None, index=rows.index)), errors="coerce")
    rows = rows.assign(row=rows["name"].astype(str).str.replace(SEED_SUFFIX, "", regex=True))
    rows = rows.assign(pretrain_epochs=epochs.where(pretrained, 0))
    constant = [c for c in differing_params(rows) if c != "seed" and rows.groupby("row")[c].nunique().max() <= 1]
    table = over_seeds(rows, "row", ["test_top1", "test_ece", "pretrain_train_acc", "wall_total_s"])
    firsts = rows.groupby("row", sort=False)[[*constant, "pretrain_epochs"]].first().reset_index()
    return firsts.merge(table, on="row").drop(columns="wall_total_s sd")


def mean_interval(values: pd.Series) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95% interval (Student's t; no interval below 2 values)."""
    values = values.dropna()
    n, mean = len(values), values.mean()
    half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / n**0.5 if n > 1 else float("nan")
    return mean, mean - half, mean + half


def paired(rows: pd.DataFrame, metric: str, baseline: str) -> pd.DataFrame:
    """Per row, its metric minus `baseline`'s seed by seed (the seeds both have): the number of pairs,
    the mean difference and its 95% interval (`low`, `high`)."""
    wide = rows.pivot_table(index="seed", columns="row", values=metric, aggfunc="first")
    out = []
    for row in wide.columns.drop(baseline, errors="ignore"):
        differences = (wide[row] - wide[baseline]).dropna() if baseline in wide else pd.Series(dtype=float)
        out.append([row, len(differences), *mean_interval(differences)])
    return pd.DataFrame(out, columns=["row", "pairs", "mean", "low", "high"])


# ---- as text ------------------------------------------------------------------------------

PERCENT_WORDS = ("top1", "top5", "top-1", "top-5", "acc", "difference", " - ")


def cell(column: str, value, percent: bool) -> str:
    """A value as a table shows it: accuracies (and their differences, signed) as percentages,
    calibration errors to 3 places, rates to 1, seconds to 0."""
    if value is None or (not isinstance(value, str | list) and pd.isna(value)):
        return ""
    if not isinstance(value, int | float):
        return str(value)
    name = column.lower().removesuffix(" mean")  # a mean without its sd column is shown as its metric
    if "ece" in name:
        return f"{value:.3f}"
    if any(word in name for word in PERCENT_WORDS):
        sign = "+" if ("difference" in name or " - " in name) and value > 0 else ""
        return f"{sign}{100 * value:.2f}%" if percent else f"{value:.4f}"
    if name.endswith("_per_s"):  # before "_s": a rate, not seconds
        return f"{value:.1f}"
    if name.endswith(("_s", " s", "seconds")):
        return f"{value:.0f}"
    if isinstance(value, float) and value.is_integer():  # a count, e.g. a mean of parameter counts
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def shown(table: pd.DataFrame, percent: bool = False) -> pd.DataFrame:
    """The table as text cells: `X mean` and `X sd` merged into `X` (mean ± sd), numbers by their kind."""
    out = {}
    for column in table.columns:
        if column.endswith(" sd") and f"{column[:-3]} mean" in table:
            continue
        if column.endswith(" mean") and f"{column[:-5]} sd" in table:
            metric = column[:-5]
            out[metric] = [
                cell(metric, m, percent) + (f" ± {cell(metric, d, percent)}" if pd.notna(d) else "")
                for m, d in zip(table[column], table[f"{metric} sd"])
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
    """Markdown with readable numbers: text columns left-aligned, numbers right-aligned."""
    cells = shown(table, percent)
    numeric = [pd.api.types.is_numeric_dtype(table[c]) if c in table else True for c in cells.columns]
    align = ["right" if number else "left" for number in numeric]
    return cells.to_markdown(index=False, disable_numparse=True, colalign=align)  # our formatting, as written


def fit_width(table: pd.DataFrame, width: int = 120, percent: bool = True) -> str:
    """Plain text no wider than `width`: long cells shortened, and the right-most params that still do not
    fit left out (named below the table)."""
    cells = shown(table, percent).map(lambda text: text if len(text) <= 40 else text[:19] + "…" + text[-20:])
    dropped, droppable = [], [c for c in cells.columns if "." in c]  # params (dotted keys), never results

    def render(frame: pd.DataFrame) -> str:
        return frame.to_markdown(index=False, tablefmt="simple", disable_numparse=True)

    text = render(cells)
    while max(map(len, text.splitlines())) > width and droppable:
        dropped.append(droppable.pop())
        text = render(cells.drop(columns=dropped))
    if dropped:
        text += f"\n(left out to fit {width} columns: {', '.join(reversed(dropped))}; see the CSV)"
    return text

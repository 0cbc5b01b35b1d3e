"""`synthvit results`: the numbers this project publishes, locked in git under results/.

    synthvit results lock EXPERIMENT --as GROUP/NAME [--row ROW]   copy a finished DVC experiment into results/
    synthvit results show GROUP [--markdown | --csv]               its table (terminal <= 120 columns)
    synthvit results check GROUP/NAME [--pull]                     run it again and compare
    synthvit results readme [--check]                              regenerate the README's and docs' tables

Experiment refs, tags and DVC remotes do not travel with a clone; results/ does. A locked
run is a folder results/GROUP/NAME/ holding everything that says what ran and what it gave:
params.yaml and dvc.lock (the exact code, data and params), metrics/*.json, the per-epoch
histories (history/*.csv), the stages' timing files (wall time, machine) and run.yaml
(experiment, commit, row and seed in its group's table, the command that re-runs it).
results/GROUP/group.yaml says how the group is tabulated (see `group_table`).

README.md and docs/*.md show the tables between `<!-- results GROUP -->` and
`<!-- end results -->` markers, written by `synthvit results readme`; a test fails when
they and results/ disagree.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from synthvit.commands.benchmarks import quoted
from synthvit.commands.comparison import fit_width, markdown_table, over_seeds
from synthvit.commands.experiments import STAGES, TRAINING_STAGES, Experiment
from synthvit.commands.recipe import as_argument
from synthvit.config import committed_params, parse_params, read_yaml
from synthvit.errors import UserError
from synthvit.files import history_path, metrics_path, timing_path, write_text

RESULTS = Path("results")
DOCUMENTS = [Path("README.md"), *sorted(Path("docs").glob("*.md"))]
MARKER = re.compile(r"(<!-- results (?P<group>[\w./-]+) -->\n)(?P<body>.*?)(<!-- end results -->)", re.S)


# ---- locking ------------------------------------------------------------------------


def flatten(params: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def rerun_command(name: str, params: dict) -> str:
    """The `dvc exp run` that gives these params on top of the committed params.yaml."""
    base = flatten(committed_params())
    changed = {k: v for k, v in flatten(params).items() if base.get(k) != v}
    return " ".join(["dvc exp run -n", shlex.quote(name), *(as_argument(k, v, quote=True) for k, v in changed.items())])


def lock(experiment: Experiment, folder: Path, row: str, force: bool = False) -> Path:
    """Write a finished experiment into `folder` (results/GROUP/NAME); returns the folder."""
    if not any(experiment.ran(stage) for stage in TRAINING_STAGES):  # a probe may stop at finetune, unscored
        raise UserError(
            f"experiment {experiment.name!r} trained nothing (no pretrain or finetune stage in its dvc.lock): "
            "lock a pipeline that ran"
        )
    if folder.exists() and not force:
        raise UserError(f"{folder} exists: results are locked once; choose another name, or --force to replace it")
    stages = [stage for stage in STAGES if experiment.ran(stage)]
    timings = {stage: experiment.timing(stage) for stage in stages}
    machines = [t["machine"] for t in timings.values() if t.get("machine")]
    walls = {stage: t["wall_seconds"] for stage, t in timings.items() if "wall_seconds" in t}
    run = {
        "experiment": experiment.name,
        "commit": experiment.rev,
        "locked": datetime.date.today().isoformat(),
        "row": row,
        # the seed that pairs arms: fine-tuning's own when set (the study's arms share one pre-training seed)
        "seed": experiment.param("seed")
        if experiment.param("finetune.seed") is None
        else experiment.param("finetune.seed"),
        "command": rerun_command(experiment.name, experiment.params),
        "machine": machines[-1] if machines else None,
        "wall_seconds": {**walls, "total": round(sum(walls.values()), 2)} if walls else None,
    }
    write_text(folder / "params.yaml", experiment.text("params.yaml"))
    write_text(folder / "dvc.lock", experiment.text("dvc.lock"))
    for stage in stages:
        if experiment.exists(metrics_path(stage)):
            write_text(folder / metrics_path(stage), experiment.text(metrics_path(stage)))
        if stage in TRAINING_STAGES:
            write_text(folder / "history" / f"{stage}.csv", experiment.text(history_path(stage)))
        if timings[stage]:
            write_text(folder / "timing" / f"{stage}.json", experiment.text(timing_path(stage)))
    write_text(folder / "run.yaml", yaml.safe_dump(run, sort_keys=False))
    return folder


# ---- reading locked runs -------------------------------------------------------------


def locked_row(folder: Path) -> dict:
    """One locked run as a comparison row (the columns `synthvit compare` uses)."""
    run = read_yaml(folder / "run.yaml")
    params = flatten(read_yaml(folder / "params.yaml") or {})

    def metric(stage: str, key: str):
        path = folder / metrics_path(stage)
        return json.loads(path.read_text()).get(key) if path.is_file() else None

    walls = run.get("wall_seconds") or {}
    held_out = "val_top1" if params.get("data.val_fraction", 0) else "curve_top1"
    return {
        "name": folder.name,
        "row": run["row"],
        "seed": run.get("seed"),
        "experiment": run["experiment"],
        "test_top1": metric("evaluate", "top1"),
        "test_top5": metric("evaluate", "top5"),
        "test_ece": metric("evaluate", "ece"),
        held_out: metric("finetune", "eval_acc"),
        "pretrain_train_acc": metric("pretrain", "train_acc") if params.get("finetune.init") == "pretrained" else None,
        # on fractal instances no epoch drew (pretrain.heldout_per_class)
        "pretrain_heldout_acc": metric("pretrain", "eval_acc") if params.get("finetune.init") == "pretrained" else None,
        **{f"wall_{stage}_s": walls.get(stage) for stage in STAGES},
        "wall_total_s": walls.get("total"),
        "cpu": (run.get("machine") or {}).get("cpu"),
        **{f"params.{k}": v for k, v in params.items()},
    }


def group_rows(group: str) -> tuple[dict, pd.DataFrame]:
    folder = RESULTS / group
    if not (folder / "group.yaml").is_file():
        known = sorted(p.parent.name for p in RESULTS.glob("*/group.yaml"))
        raise UserError(
            f"no results group {group!r} (results/{group}/group.yaml); groups: {', '.join(known) or 'none'}"
        )
    runs = sorted(p.parent for p in folder.glob("*/run.yaml"))
    if not runs:
        raise UserError(f"results/{group} holds no locked runs: `synthvit results lock EXPERIMENT --as {group}/NAME`")
    return read_yaml(folder / "group.yaml"), pd.DataFrame([locked_row(run) for run in runs])


def group_table(group: str) -> pd.DataFrame:
    """The group's table, as group.yaml says: `table: arms` pairs two rows seed by seed (A, B, A - B) and
    adds their mean and sd; `table: rows` gives each row's mean +- sd over its seeds (`metric`, then
    `also`), after the `params` that tell the rows apart."""
    spec, rows = group_rows(group)
    metric = spec.get("metric", "test_top1")
    if spec["table"] == "arms":
        first, second = spec["arms"]
        return arms_by_seed(rows, first, second, metric)
    table = over_seeds(rows, "row", [metric, *spec.get("also", [])], order=spec.get("rows"))
    shown = [f"params.{key}" for key in spec.get("params", [])]  # what the rows differ in, from their params.yaml
    if shown:
        firsts = rows.groupby("row", sort=False)[shown].first().reset_index()
        firsts.columns = ["row", *spec["params"]]
        table = table.merge(firsts, on="row")  # the results first: params are what a narrow terminal leaves out
    return table


def arms_by_seed(rows: pd.DataFrame, first: str, second: str, metric: str) -> pd.DataFrame:
    """Seed by seed: each arm's metric and ECE, the pre-training accuracy, and first - second; then mean and sd."""
    by_arm = {arm: rows[rows["row"] == arm].set_index("seed") for arm in (first, second)}
    seeds = sorted(set(by_arm[first].index) & set(by_arm[second].index))
    label = "top-1" if metric == "test_top1" else metric  # short: the table fits a 120-column terminal
    table = pd.DataFrame(
        {
            "seed": seeds,
            "pre-train acc": [by_arm[first].loc[s, "pretrain_train_acc"] for s in seeds],
            f"{first} {label}": [by_arm[first].loc[s, metric] for s in seeds],
            f"{first} ECE": [by_arm[first].loc[s, "test_ece"] for s in seeds],
            f"{second} {label}": [by_arm[second].loc[s, metric] for s in seeds],
            f"{second} ECE": [by_arm[second].loc[s, "test_ece"] for s in seeds],
        }
    )
    table["difference"] = table[f"{first} {label}"] - table[f"{second} {label}"]
    # What `make demo` cost: the first arm's whole pipeline, then the second's stages from fine-tuning on
    # (its fractals and pre-training are the first's, restored by DVC; its timing files repeat theirs).
    after_pretraining = [f"wall_{stage}_s" for stage in STAGES[STAGES.index("finetune") :]]
    table["wall s"] = [
        by_arm[first].loc[s, "wall_total_s"] + by_arm[second].loc[s, after_pretraining].sum(min_count=1) for s in seeds
    ]
    numbers = table.drop(columns="seed")
    summary = pd.DataFrame(
        [{"seed": "mean", **numbers.mean().to_dict()}, {"seed": "sd", **numbers.std(ddof=1).to_dict()}]
    )
    return pd.concat([table.astype({"seed": object}), summary], ignore_index=True)


# ---- the documents ------------------------------------------------------------------


def document_table(group: str) -> str:
    """What a document shows for `<!-- results GROUP -->`: the group's table and note, or a recorded benchmark."""
    if group.startswith("benchmarks/"):
        return quoted(group.split("/", 1)[1])
    spec, _ = group_rows(group)
    table = markdown_table(group_table(group), percent=True)
    return f"{table}\n\n{spec.get('note', '').strip()}\n".replace("\n\n\n", "\n\n")


def regenerate(text: str) -> str:
    return MARKER.sub(lambda m: f"{m.group(1)}{document_table(m.group('group'))}{m.group(4)}", text)


# ---- the command --------------------------------------------------------------------


def lock_command_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="a finished DVC experiment (dvc exp show), or `workspace`")
    parser.add_argument("--as", dest="target", required=True, metavar="GROUP/NAME", help="where in results/ it goes")
    parser.add_argument("--row", help="its row in the group's table (default: NAME without a -s<seed> suffix)")
    parser.add_argument("--force", action="store_true", help="replace a locked run of that name")


def lock_command(args) -> int:
    """Copy a finished DVC experiment into results/GROUP/NAME: params, dvc.lock, metrics, histories, timing files
    and run.yaml."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", args.target):
        raise UserError(f"--as {args.target!r} is invalid: give GROUP/NAME (letters, digits, . _ -)")
    row = args.row or re.sub(r"-s\d+$", "", args.target.split("/")[1])
    folder = lock(Experiment.named(args.experiment), RESULTS / args.target, row, args.force)
    print(f"locked {args.experiment} in {folder} (row {row!r}); commit it: git add {folder}")
    return 0


def show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("group", help="a folder of results/ with a group.yaml")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    output.add_argument("--csv", action="store_true", help="print the table as CSV")


def show(args) -> int:
    """Print a group of locked results as a table (terminal width, Markdown or CSV)."""
    table = group_table(args.group)
    if args.csv:
        table.to_csv(sys.stdout, index=False)
    elif args.markdown:
        print(markdown_table(table, percent=True))
    else:
        print(fit_width(table))
    return 0


def check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="GROUP/NAME", help="a locked run")
    parser.add_argument(
        "--pull",
        action="store_true",
        help="restore it from the DVC remote instead of training "
        "(dvc exp run --pull): the outputs must then be the locked ones, byte for byte",
    )


def check(args) -> int:
    """Run a locked result again at its recorded params (in a temporary copy: the workspace is left alone)
    and report whether it lands within its group's seed spread."""
    folder = RESULTS / args.run
    if not (folder / "run.yaml").is_file():
        raise UserError(f"no locked run {args.run!r} (results/{args.run}/run.yaml)")
    name = (
        f"check-{folder.parent.name}-{folder.name}-{datetime.datetime.now():%m%d-%H%M%S}"  # a new experiment each time
    )
    # `dvc exp run` starts from the workspace's params.yaml (whatever ran last): set every recorded param
    # that differs from it, but an option this version removed (e.g. pretrain.momentum, which AdamW never
    # read), which the stage would refuse.
    recorded_params = flatten(read_yaml(folder / "params.yaml") or {})
    workspace = flatten(read_yaml(Path("params.yaml")) or {}) if Path("params.yaml").is_file() else {}
    known = flatten(parse_params({}).model_dump())
    if removed := sorted(set(recorded_params) - set(known)):
        print(f"left out {', '.join(removed)}: recorded, but no longer options of this version")
    changed = {k: v for k, v in recorded_params.items() if k in known and workspace.get(k, object()) != v}
    overrides = [shlex.split(as_argument(key, value, quote=True))[1] for key, value in changed.items()]
    command = [
        sys.executable,
        "-m",
        "dvc",
        "exp",
        "run",
        "--temp",
        "-n",
        name,
        # trained again (--force), not restored from this repository's run cache; --pull: from the remote
        "--pull" if args.pull else "--force",
        *[part for value in overrides for part in ("-S", value)],
    ]
    print("running:", shlex.join(command[2:]), flush=True)
    if subprocess.run(command).returncode != 0:
        raise UserError(f"the re-run of {args.run} failed (above); nothing was compared")
    again = locked_row_of(Experiment.named(name))
    recorded = locked_row(folder)
    spec, rows = group_rows(folder.parent.name)
    metric = spec.get("metric", "test_top1")
    same_row = rows[rows["row"] == recorded["row"]][metric].astype(float)
    low, high = same_row.min(), same_row.max()
    spread = same_row.std(ddof=1) if len(same_row) > 1 else 0.0
    new = again[metric]
    within = low - spread <= new <= high + spread
    print(
        f"{args.run}: recorded {metric} {recorded[metric]:.4f}, again {new:.4f} "
        f"({'identical' if new == recorded[metric] else f'{new - recorded[metric]:+.4f}'}); "
        f"its row's {len(same_row)} seed(s) span {low:.4f}-{high:.4f} (sd {spread:.4f}): "
        f"{'within' if within else 'OUTSIDE'} the spread"
    )
    return 0 if within else 1


def locked_row_of(experiment: Experiment) -> dict:
    metrics = experiment.metrics("evaluate")
    finetune = experiment.metrics("finetune")
    held_out = "val_top1" if experiment.param("data.val_fraction", 0) else "curve_top1"
    return {"test_top1": metrics.get("top1"), "test_ece": metrics.get("ece"), held_out: finetune.get("eval_acc")}


def readme_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="only say whether they are up to date (exit 1 if not)")


def readme(args) -> int:
    """Regenerate the result tables of README.md and docs/*.md from results/."""
    stale = []
    for document in DOCUMENTS:
        if not document.is_file():
            continue
        text = document.read_text()
        fresh = regenerate(text)
        if fresh != text:
            stale.append(str(document))
            if not args.check:
                write_text(document, fresh)
    if args.check:
        if stale:
            print(f"out of date with results/: {', '.join(stale)}; run `synthvit results readme`", file=sys.stderr)
            return 1
        print("README.md and docs/ match results/")
        return 0
    print(f"rewrote {', '.join(stale)}" if stale else "README.md and docs/ already match results/")
    return 0

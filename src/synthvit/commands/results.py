"""`synthvit results`: the numbers this project publishes, locked in git under results/.

    synthvit results lock EXPERIMENT --as GROUP/NAME [--row ROW]   copy a finished DVC experiment into results/
    synthvit results show GROUP [--markdown | --csv] [--log]       its table (terminal <= 120 columns)
    synthvit results check GROUP/NAME [--pull]                     run it again and compare
    synthvit results readme [--check]                              regenerate the README's and docs' tables

Experiment refs, tags and DVC remotes do not travel with a clone; results/ does. A locked run
is a folder results/GROUP/NAME/ holding what says what ran and what it gave: params.yaml and
dvc.lock (the exact code, data and params), metrics/*.json, the per-epoch histories
(history/*.csv), the stages' timing files (wall time, machine) and run.yaml (experiment,
commit, row and seed in its group's table, the command that re-runs it).

results/GROUP/group.yaml says how the group is tabulated: its `metric` (test_top1) and `also`
columns as mean ± sd over each row's seeds, the `params` that tell rows apart, the `rows`
order, and `paired`: rows every other row is compared with seed by seed (mean difference and its
95% interval). `figure: budget` draws the group's answer into results/GROUP/budget.png: accuracy
against pre-training image-steps, the arms without pre-training as bands. README.md and docs/*.md
show the tables between `<!-- results GROUP -->` and `<!-- end results -->`, written by
`synthvit results readme`; a test fails when they and results/ disagree.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from synthvit.commands.benchmarks import quoted
from synthvit.commands.compare import log_comparison
from synthvit.commands.recipe import as_argument
from synthvit.commands.reporting import figures, tables
from synthvit.commands.reporting.sources import TRAINING_STAGES, Experiment, locked_row, needed, pipeline_stages
from synthvit.config import MISSING, committed_params, parse_params, read_yaml
from synthvit.errors import UserError
from synthvit.evaluation import plots
from synthvit.files import history_path, metrics_path, timing_path, write_csv, write_text
from synthvit.tracking.summary import flatten

RESULTS = Path("results")
DOCUMENTS = [Path("README.md"), *sorted(Path("docs").glob("*.md"))]
MARKER = re.compile(r"(<!-- results (?P<group>[\w./-]+) -->\n)(?P<body>.*?)(<!-- end results -->)", re.S)


# ---- locking ------------------------------------------------------------------------


def overrides(params: dict, base: dict) -> list[str]:
    """The `-S key=value` arguments (quoted for a shell) that give the flat `params` on top of the nested `base`."""
    base = flatten(base)
    return [as_argument(key, value, quote=True) for key, value in params.items() if base.get(key, MISSING) != value]


def lock(experiment: Experiment, folder: Path, row: str, force: bool = False) -> Path:
    """Write a finished experiment into `folder` (results/GROUP/NAME); returns the folder."""
    if not any(experiment.ran(stage) for stage in TRAINING_STAGES):  # a probe may stop at finetune, unscored
        raise UserError(
            f"experiment {experiment.name!r} trained nothing (no pretrain or finetune stage in its dvc.lock): "
            "lock a pipeline that ran"
        )
    if folder.exists() and not force:
        raise UserError(f"{folder} exists: results are locked once; choose another name, or --force to replace it")
    params = flatten(experiment.params)
    stages = [stage for stage in pipeline_stages() if experiment.ran(stage) and needed(stage, params)]
    timings = {stage: experiment.metrics(stage, timing_path) for stage in stages}
    machines = [t["machine"] for t in timings.values() if t.get("machine")]
    walls = {stage: t["wall_seconds"] for stage, t in timings.items() if "wall_seconds" in t}
    run = {
        "experiment": experiment.name,
        "commit": experiment.rev,
        "locked": datetime.date.today().isoformat(),
        "row": row,
        "seed": experiment.param("finetune.seed", experiment.param("seed")),  # pairs arms: fine-tuning's own if set
        "command": " ".join(["dvc exp run -n", shlex.quote(experiment.name), *overrides(params, committed_params())]),
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


# ---- a group's table and figure ------------------------------------------------------


def group_rows(group: str, allow_empty: bool = False) -> tuple[dict, pd.DataFrame]:
    """The group's spec (group.yaml) and one row per locked run. No locked runs: an error, unless
    `allow_empty` or the group is a ledger (it lists its claims before any run)."""
    folder = RESULTS / group
    if not (folder / "group.yaml").is_file():
        known = ", ".join(sorted(p.parent.name for p in RESULTS.glob("*/group.yaml"))) or "none"
        raise UserError(f"no results group {group!r} (results/{group}/group.yaml); groups: {known}")
    spec = {"metric": "test_top1", **(read_yaml(folder / "group.yaml") or {})}
    runs = sorted(p.parent for p in folder.glob("*/run.yaml"))
    if not runs and (allow_empty or "claims" in spec):
        return spec, pd.DataFrame(columns=["row", "seed"])
    if not runs:
        raise UserError(f"results/{group} holds no locked runs: `synthvit results lock EXPERIMENT --as {group}/NAME`")
    rows = pd.DataFrame([locked_row(run) for run in runs])
    # every epoch draws num_classes x instances_per_class images
    factors = [f"params.{key}" for key in ("synthetic.num_classes", "synthetic.instances_per_class", "pretrain.epochs")]
    steps = rows.reindex(columns=factors).apply(pd.to_numeric, errors="coerce").prod(axis=1, min_count=len(factors))
    return spec, rows.assign(pretrain_image_steps=steps.where(rows["pretrain_train_acc"].notna()))


def interval(mean, low, high) -> str:
    """A paired difference in points, with its 95% interval when there is one (two pairs or more)."""
    if pd.isna(mean):
        return ""
    return f"{100 * mean:+.2f}" + ("" if pd.isna(low) else f" [{100 * low:+.2f}, {100 * high:+.2f}]")


def claim_row(claim: dict, rows: pd.DataFrame, metric: str) -> dict:
    """A ledger line: the claim, its figure, ours from the locked rows it names, the command that runs it and
    the verdict. `absolute`: reproduced at or above the claimed figure less 2 points; `better: [A, B]`: A beats
    B, paired by seed, reproduced when the 95% interval of A - B is above 0; `compare: [A, B]`: measured, no
    direction claimed; `needs`: what this machine lacks to run it; `differs`: what our recipe does otherwise,
    said beside a verdict that is not `reproduced`. A claim none of whose rows is locked: not run yet."""
    ours, verdict = "", f"needs {claim['needs']}" if "needs" in claim else ""
    pair = claim.get("better") or claim.get("compare")
    named = [claim["row"]] if "row" in claim else pair or []
    if rows["row"].isin(named).any():
        seeds = tables.over_seeds(rows, "row", [metric]).set_index("row")
        mean_sd = tables.shown(seeds, percent=True)[metric]  # per row: 46.00% ± 0.50%
        if "absolute" in claim:
            ours = mean_sd[claim["row"]]
            gap = seeds.loc[claim["row"], f"{metric} mean"] - claim["absolute"]
            below = f"not reproduced: {-100 * gap:.1f} points below"
            verdict = f"reproduced ({100 * gap:+.1f} points)" if gap >= -0.02 else below
        if pair:
            difference = tables.paired(rows[rows["row"].isin(pair)], metric, pair[1]).iloc[0]
            ours = (
                f"{pair[0]} {mean_sd.get(pair[0], '')}, {pair[1]} {mean_sd.get(pair[1], '')}; difference "
                f"{interval(difference['mean'], difference['low'], difference['high'])}"
            )
            verdict = "measured (no direction claimed)"
            if "better" in claim:
                verdict = "reproduced" if difference["low"] > 0 else "not shown: the 95% interval holds 0"
                verdict = "not reproduced: the other way" if difference["high"] < 0 else verdict
    if verdict.startswith("not") and claim.get("differs"):
        verdict += f" ({claim['differs']})"
    return {
        "claim": claim["claim"],
        "claimed": claim.get("figure", ""),
        "ours": ours,
        "command": f"`{claim.get('command') or 'dvc exp run $(synthvit recipe ' + claim['recipe'] + ')'}`",
        "verdict": verdict or "not run yet (`make ledger`)",
    }


def group_table(group: str) -> pd.DataFrame:
    """Each row's mean ± sd over its seeds (`metric`, then `also`), after the `params` that tell rows
    apart; for each `paired` row, every row's mean difference from it with its 95% interval (points).
    A ledger (`claims`): one line per claim (claim_row)."""
    spec, rows = group_rows(group)
    metric = spec["metric"]
    if "claims" in spec:
        return pd.DataFrame([claim_row(claim, rows, metric) for claim in spec["claims"]])
    table = tables.over_seeds(rows, "row", [metric, *spec.get("also", [])], order=spec.get("rows"))
    for against in spec.get("paired", []):
        differences = tables.paired(rows, metric, against).set_index("row")
        cells = {r: interval(d["mean"], d["low"], d["high"]) for r, d in differences.iterrows()}
        table[f"- {against} (95% CI)"] = table["row"].map(cells).fillna("")
    shown = [f"params.{key}" for key in spec.get("params", [])]  # what the rows differ in, from their params.yaml
    if shown:
        own = tables.own_pretraining(rows, "params.")
        unused = [c for c in shown if c.startswith("params.pretrain.")]  # a scratch arm's pretrain.* never ran
        rows = rows.assign(**{c: rows[c].astype(object).where(own, "") for c in unused})
        firsts = rows.groupby("row", sort=False)[shown].first().reset_index()
        firsts.columns = ["row", *spec["params"]]
        table = table.merge(firsts, on="row", how="left")  # results first: a narrow terminal drops params
    return table


def budget_figure(group: str):
    """The group's accuracy against pre-training image-steps (fractal categories and shuffled labels as
    points), and its arms without pre-training (scratch, mimetic) as bands: each row's mean and 95% interval."""
    spec, rows = group_rows(group)
    by_row = rows.groupby("row", sort=False)
    summary = by_row[["pretrain_image_steps", "params.finetune.init", "params.pretrain.labels"]].first()
    summary.columns = ["x", "init", "labels"]
    scores = by_row[spec["metric"]]
    summary[["mean", "low", "high"]] = [tables.mean_interval(values.astype(float)) for _, values in scores]
    pretrained = summary["init"] == "pretrained"
    labels = {"categories": "fractal pre-training", "shuffled": "shuffled labels"}
    points = summary[pretrained].assign(label=summary["labels"].map(labels))
    bands = summary[~pretrained].assign(label=summary["init"])
    return figures.budget_figure(points, bands, spec.get("title", group))


def document_table(group: str) -> str:
    """What a document shows for `<!-- results GROUP -->`: the group's table and note, or a recorded benchmark."""
    if group.startswith("benchmarks/"):
        return quoted(group.split("/", 1)[1])
    spec, rows = group_rows(group, allow_empty=True)
    if rows.empty and "claims" not in spec:
        return f"Not run yet: results/{group} holds no locked runs.\n\n{spec.get('note', '').strip()}\n"
    table = tables.markdown_table(group_table(group), percent=True)
    return f"{table}\n\n{spec.get('note', '').strip()}\n".replace("\n\n\n", "\n\n")


def regenerate(text: str) -> str:
    return MARKER.sub(lambda m: f"{m.group(1)}{document_table(m.group('group'))}{m.group(4)}", text)


# ---- the commands -------------------------------------------------------------------


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
    row = args.row or tables.SEED_SUFFIX.sub("", args.target.split("/")[1])
    folder = lock(Experiment.named(args.experiment), RESULTS / args.target, row, args.force)
    print(f"locked {args.experiment} in {folder} (row {row!r}); commit it: git add {folder}")
    return 0


def show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("group", help="a folder of results/ with a group.yaml")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    output.add_argument("--csv", action="store_true", help="print the table as CSV")
    parser.add_argument("--log", action="store_true", help="also log the table (and figure) as one MLflow run")


def show(args) -> int:
    """Print a group of locked results as a table (terminal width, Markdown or CSV); --log: as one MLflow run,
    its paired differences as metrics."""
    spec, rows = group_rows(args.group)
    table = group_table(args.group)
    if args.csv:
        table.to_csv(sys.stdout, index=False)
    else:
        print(tables.markdown_table(table, percent=True) if args.markdown else tables.fit_width(table))
    if args.log:
        folder = RESULTS / args.group
        paths = [write_csv(folder / "table.csv", table), write_text(folder / "table.md", document_table(args.group))]
        if spec.get("figure") == "budget":
            paths.append(plots.save(budget_figure(args.group), folder / "budget.png"))
        metric = spec["metric"]
        metrics = {
            f"{metric} {d.row} - {against}{suffix}": d[key]
            for against in spec.get("paired", [])
            for _, d in tables.paired(rows, metric, against).iterrows()
            for key, suffix in (("mean", ""), ("low", " low"), ("high", " high"))
        }
        print(f"logged to MLflow run {log_comparison(paths, args.group, metrics).run_id}")
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
    name = f"check-{folder.parent.name}-{folder.name}-{datetime.datetime.now():%m%d-%H%M%S}"  # a new one each time
    # `dvc exp run` starts from the workspace's params.yaml (whatever ran last): set every recorded param that
    # differs, but an option this version removed (e.g. pretrain.momentum, which AdamW never read).
    recorded_params = flatten(read_yaml(folder / "params.yaml") or {})
    known = flatten(parse_params({}).model_dump())
    if removed := sorted(set(recorded_params) - set(known)):
        print(f"left out {', '.join(removed)}: recorded, but no longer options of this version")
    workspace = read_yaml(Path("params.yaml")) or {} if Path("params.yaml").is_file() else {}
    kept = {key: value for key, value in recorded_params.items() if key in known}
    arguments = shlex.split(" ".join(overrides(kept, workspace)))
    # trained again (--force), not restored from this repository's run cache; --pull: from the remote
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name, "--pull" if args.pull else "--force"]
    print("running:", shlex.join(command[2:] + arguments), flush=True)
    if subprocess.run(command + arguments).returncode != 0:
        raise UserError(f"the re-run of {args.run} failed (above); nothing was compared")
    spec, rows = group_rows(folder.parent.name)
    metric = spec["metric"]
    again = Experiment.named(name).row()[metric]
    recorded = locked_row(folder)[metric]
    same_row = rows[rows["row"] == read_yaml(folder / "run.yaml")["row"]][metric].astype(float)
    low, high = same_row.min(), same_row.max()
    spread = same_row.std(ddof=1) if len(same_row) > 1 else 0.0
    within = low - spread <= again <= high + spread
    print(
        f"{args.run}: recorded {metric} {recorded:.4f}, again {again:.4f} "
        f"({'identical' if again == recorded else f'{again - recorded:+.4f}'}); its row's {len(same_row)} seed(s) "
        f"span {low:.4f}-{high:.4f} (sd {spread:.4f}): {'within' if within else 'OUTSIDE'} the spread"
    )
    return 0 if within else 1


def readme_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="only say whether they are up to date (exit 1 if not)")


def readme(args) -> int:
    """Regenerate the result tables of README.md and docs/*.md from results/, and each group's figure."""
    fresh = {document: regenerate(document.read_text()) for document in DOCUMENTS if document.is_file()}
    stale = [str(document) for document, text in fresh.items() if text != document.read_text()]
    if args.check:
        if stale:
            print(f"out of date with results/: {', '.join(stale)}; run `synthvit results readme`", file=sys.stderr)
            return 1
        print("README.md and docs/ match results/")
        return 0
    for document in stale:
        write_text(Path(document), fresh[Path(document)])
    for spec_file in sorted(RESULTS.glob("*/group.yaml")):  # figures are drawn, not checked: pixels vary by version
        if (read_yaml(spec_file) or {}).get("figure") == "budget":
            print(f"drew {plots.save(budget_figure(spec_file.parent.name), spec_file.parent / 'budget.png')}")
    print(f"rewrote {', '.join(stale)}" if stale else "README.md and docs/ already match results/")
    return 0

"""`synthvit compare --arms A B`: two DVC experiments side by side, the answer `make demo` ends with.

    synthvit compare --arms demo-1203-1015-synthetic demo-1203-1015-scratch [--output-dir plots/demo]

Both arms are read from DVC (their params, metrics, per-epoch histories and timing files,
from the cache), so an arm whose stages DVC restored from its run cache reads exactly like
one that ran. The table: test top-1, top-5 and ECE (the evaluate stage, on the whole test
split), the pre-training accuracy when the arm starts from it, and wall seconds: of
pre-training, of fine-tuning, and of every stage the arm needs (a scratch arm does not
need the fractals or the pre-training); then A - B. The figure: the pre-training curve
beside both arms' held-out accuracy per fine-tuning epoch, each ending at its score on
the whole test split, so a curve drawn on a subset is never read as the result.

Writes arms.md, arms.csv and arms.png into --output-dir and logs them to both arms'
MLflow parent runs (under comparison/) when the store has them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
from matplotlib.ticker import MaxNLocator

from synthvit.commands import comparison
from synthvit.commands.experiments import Experiment, experiment_revs
from synthvit.errors import UserError
from synthvit.evaluation import plots
from synthvit.evaluation.plots import plt
from synthvit.files import write_csv, write_text
from synthvit.tracking import summary
from synthvit.tracking.store import PIPELINE_TAG, open_client, sqlite_path, tracking_uri

OUTPUT_NAMES = ("arms.csv", "arms.md", "arms.png")
PRETRAINING = ("generate_synthetic", "pretrain")
FINE_TUNING = ("finetune", "evaluate", "visualize")
COLUMNS = ["test_top1", "test_top5", "test_ece", "pretrain_acc", "pretrain_s", "finetune_s", "cost_s"]
HEADERS = {
    "test_top1": "test top-1",
    "test_top5": "top-5",
    "test_ece": "ECE",
    "pretrain_acc": "pre-train acc",
    "pretrain_s": "pre-train s",
    "finetune_s": "fine-tune s",
    "cost_s": "all stages s",
}


@dataclasses.dataclass
class Arm:
    label: str  # A or B in the table
    experiment: Experiment

    @property
    def init(self) -> str:
        return self.experiment.param("finetune.init", "?")

    @property
    def pretrained(self) -> bool:
        return self.init == "pretrained"

    def wall(self, stage: str) -> float | None:
        return self.experiment.timing(stage).get("wall_seconds")

    def row(self) -> dict:
        test = self.experiment.metrics("evaluate")
        needed = (*PRETRAINING, *FINE_TUNING) if self.pretrained else FINE_TUNING
        walls = [self.wall(stage) for stage in needed]
        return {
            "arm": self.label,
            "experiment": self.experiment.name,
            "init": self.init,
            "test_top1": test.get("top1"),
            "test_top5": test.get("top5"),
            "test_ece": test.get("ece"),
            "pretrain_acc": self.experiment.metrics("pretrain").get("train_acc") if self.pretrained else None,
            "pretrain_s": self.wall("pretrain") if self.pretrained else None,
            "finetune_s": self.wall("finetune"),
            "cost_s": sum(walls) if None not in walls else None,
            "test_images": test.get("num_images"),
        }


def arms_table(rows: list[dict]) -> pd.DataFrame:
    """One row per arm, then the difference of the first minus the second."""
    table = pd.DataFrame(rows)
    first, second = table.iloc[0], table.iloc[1]
    difference = {"arm": "A - B", "experiment": "", "init": ""}
    for key in COLUMNS:
        both = pd.notna(first[key]) and pd.notna(second[key])
        difference[key] = first[key] - second[key] if both else None
    return pd.concat([table, pd.DataFrame([difference])], ignore_index=True)


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as shown: short arm labels (the legend names the experiments), readable headers."""
    return table[["arm", "init", *COLUMNS]].rename(columns=HEADERS)


def legend(table: pd.DataFrame) -> str:
    return "   ".join(f"{row.arm} = {row.experiment}" for row in table.itertuples() if row.experiment)


def arms_figure(arms: list[Arm], table: pd.DataFrame):
    """Left: the pre-training curve (from the arm that uses it); right: each arm's held-out accuracy per
    fine-tuning epoch, and a star at its score on the whole test split."""
    fig, (ax_pre, ax_fine) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.5]})
    pretrained = next((arm for arm in arms if arm.pretrained), None)
    curve = pretrained.experiment.history("pretrain") if pretrained else pd.DataFrame()
    if curve.empty:
        ax_pre.text(
            0.5, 0.5, "neither arm starts from pre-training", ha="center", va="center", transform=ax_pre.transAxes
        )
    else:
        ax_pre.plot(curve["epoch"], curve["train_acc"], marker=".", color="tab:gray")
    ax_pre.set(
        xlabel="pre-training epoch",
        ylabel="training accuracy (fractal categories)",
        title="Pre-training on fractals",
        ylim=(0, 1),
    )
    on_test = all(not arm.experiment.param("data.val_fraction", 0) for arm in arms)
    held_out = "test" if on_test else "validation"
    counts = set()
    for arm, row, color in zip(arms, table.itertuples(), ("tab:blue", "tab:orange")):
        history = arm.experiment.history("finetune")
        counts.add(arm.experiment.metrics("finetune").get("eval_images"))
        ax_fine.plot(
            history["epoch"],
            history["eval_acc"],
            marker=".",
            color=color,
            label=f"{arm.label}: {arm.init}, {held_out} curve",
        )
        if pd.notna(row.test_top1):  # the score the table reports, on every test image
            last = history["epoch"].max()
            ax_fine.scatter(
                [last],
                [row.test_top1],
                marker="*",
                s=160,
                color=color,
                zorder=4,
                label=f"{arm.label}: whole test split {100 * row.test_top1:.2f}%",
            )
    scored = f" on {counts.pop():,} images" if len(counts) == 1 and None not in counts else ""
    test_images = table["test_images"].dropna()
    whole = f"; stars: all {int(test_images.iloc[0]):,} test images" if len(test_images) else ""
    ax_fine.set(
        xlabel="fine-tuning epoch",
        ylabel=f"{held_out} top-1",
        title=f"Fine-tuning: {held_out} accuracy per epoch{scored}{whole}",
    )
    for ax in (ax_pre, ax_fine):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_fine.legend(fontsize=8, loc="lower right")
    return fig


def log_to_mlflow(arms: list[Arm], paths: list[Path]) -> str | None:
    """Log the outputs to each arm's latest MLflow parent run; returns the UI link, None without a store."""
    uri = tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return None
    client = open_client(uri)
    experiment = client.get_experiment_by_name(comparison.default_experiment())
    if experiment is None:
        return None
    for arm in arms:
        runs = client.search_runs(
            [experiment.experiment_id],
            f"tags.`dvc.exp_name` = '{arm.experiment.name}'",
            order_by=["attributes.start_time DESC"],
        )
        parents = [run for run in runs if PIPELINE_TAG in run.data.tags]
        for path in paths if parents else []:
            client.log_artifact(parents[0].info.run_id, str(path), artifact_path="comparison")
    return summary.ui_url(uri, experiment.experiment_id)


def run(args) -> int:
    first, second = args.arms
    if first == second:
        raise UserError(f"--arms needs two different experiments, got {first!r} twice")
    if args.source == "dvc" or args.filter or args.last or args.all:
        raise UserError("--arms names its two experiments: leave out --source, --filter, --last and --all")
    folder = args.output_dir
    comparison.check_output_dir(folder, args.force, OUTPUT_NAMES)
    revs = experiment_revs()
    arms = [Arm(label, Experiment.named(name, revs)) for label, name in zip("AB", args.arms)]
    table = arms_table([arm.row() for arm in arms])
    write_text(
        folder / comparison.MARKER, "Files here are written by `synthvit compare`, which replaces them on each run.\n"
    )
    markdown = comparison.markdown_table(display(table), percent=True)
    paths = [
        write_csv(folder / "arms.csv", table),
        write_text(
            folder / "arms.md",
            f"# {first} against {second}\n\n{markdown}\n\n{legend(table)}\n\n![accuracy per epoch](arms.png)\n",
        ),
        plots.save(arms_figure(arms, table), folder / "arms.png"),
    ]
    print(comparison.fit_width(display(table)))
    print(legend(table))
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    link = log_to_mlflow(arms, paths)
    if link:
        uri = tracking_uri()
        serve = "" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}, then open "
        print(f"MLflow (both runs, their headline columns; logged under comparison/): {serve}{link}")
    return 0

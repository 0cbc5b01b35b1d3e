"""The figures of comparisons: accuracy against cost, over seeds, arms per epoch, and a study's budget
curve. Each returns a matplotlib figure (tests read its data back); callers save it (plots.save)."""

from __future__ import annotations

import pandas as pd
from matplotlib.ticker import MaxNLocator

from synthvit.evaluation.plots import plt
from synthvit.files import from_pipeline_pretraining

X_AXES = {
    "params": ("parameters", "parameters (fine-tuned model)"),
    "wall": ("wall_total_s", "total wall time (s)"),
    "pretrain": ("pretrain_epochs", "pre-training epochs (0: from scratch)"),
}


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
    """Test top-1 mean ± sd over seeds: one bar per row, or against the pre-training epochs (`--x pretrain`)."""
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
        positions = list(range(len(table)))
        bars = ax.barh(positions, mean, xerr=sd, capsize=4, color="tab:blue", alpha=0.8)
        ax.bar_label(bars, [f"{100 * m:.1f} ± {100 * d:.1f}" for m, d in zip(mean, sd)], padding=4, fontsize=8)
        ax.set_yticks(positions, table["row"])
        ax.invert_yaxis()
        low = max(0.0, float((mean - sd).min()) - 0.05)
        ax.set(xlabel="test top-1 (mean ± sd over seeds)", xlim=(low, min(1.0, float((mean + sd).max()) + 0.03)))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig


def arms_figure(arms: list, table: pd.DataFrame):
    """Left: the pre-training curves of the first arm that starts from one (training and held-out
    accuracy); right: each arm's held-out accuracy per fine-tuning epoch, a star at its whole-test score.
    `arms`: (label, Experiment) pairs; `table`: their rows (test_top1, test_images)."""
    fig, (ax_pre, ax_fine) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.5]})
    pretrained = next(
        (e for _, e in arms if from_pipeline_pretraining(e.param("finetune.init"), e.param("finetune.backbone"))), None
    )
    curve = pretrained.history("pretrain") if pretrained else pd.DataFrame()
    for column, label in (("train_acc", "training"), ("eval_acc", "held-out instances")):
        if column in curve:
            ax_pre.plot(curve["epoch"], curve[column], marker=".", label=label)
    if curve.empty:
        text = "no pre-training curve (scratch, mimetic or a released backbone)"
        ax_pre.text(0.5, 0.5, text, ha="center", va="center", transform=ax_pre.transAxes, fontsize=8)
    else:
        ax_pre.legend(fontsize=8)
    ax_pre.set(xlabel="pre-training epoch", ylabel="accuracy (fractal categories)", title="Pre-training", ylim=(0, 1))
    held_out = "test" if all(not e.param("data.val_fraction", 0) for _, e in arms) else "validation"
    counts = set()
    for (label, experiment), row in zip(arms, table.itertuples()):
        history = experiment.history("finetune")
        counts.add(experiment.metrics("finetune").get("eval_images"))
        curve_label = f"{label}: {experiment.param('finetune.init', '?')}, {held_out} curve"
        (line,) = ax_fine.plot(history["epoch"], history["eval_acc"], marker=".", label=curve_label)
        if pd.notna(row.test_top1):  # the score the table reports, on every test image
            star = f"{label}: whole test split {100 * row.test_top1:.2f}%"
            end = history["epoch"].max()
            ax_fine.scatter([end], [row.test_top1], marker="*", s=160, color=line.get_color(), zorder=4, label=star)
    scored = f" on {counts.pop():,} images" if len(counts) == 1 and None not in counts else ""
    images = table["test_images"].dropna() if "test_images" in table else pd.Series(dtype=float)
    whole = f"; stars: all {int(images.iloc[0]):,} test images" if len(images) else ""
    title = f"Fine-tuning: {held_out} accuracy per epoch{scored}{whole}"
    ax_fine.set(xlabel="fine-tuning epoch", ylabel=f"{held_out} top-1", title=title)
    for ax in (ax_pre, ax_fine):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_fine.legend(fontsize=8, loc="lower right")
    return fig


def budget_figure(points: pd.DataFrame, bands: pd.DataFrame, title: str):
    """A study's answer: fine-tuned accuracy against pre-training image-steps (log scale), each point
    its mean with the 95% interval over seeds; the arms without pre-training as bands across (mean and
    interval). Columns: `x` (image-steps), `label`, `mean`, `low`, `high`."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for (_, band), color in zip(bands.iterrows(), ("tab:gray", "tab:green", "tab:purple")):
        ax.axhspan(band["low"], band["high"], color=color, alpha=0.18)
        ax.axhline(band["mean"], color=color, lw=1.2, label=f"{band['label']} {100 * band['mean']:.1f}%")
    for label, group in points.groupby("label", sort=False):
        group = group.sort_values("x")
        error = [group["mean"] - group["low"], group["high"] - group["mean"]]
        ax.errorbar(group["x"], group["mean"], yerr=error, marker="o", capsize=4, label=label)
    ax.set_xscale("log")
    ax.set(xlabel="pre-training image-steps", ylabel="test top-1 (mean, 95% interval over seeds)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig

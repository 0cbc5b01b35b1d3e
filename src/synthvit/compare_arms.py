"""`synthvit compare --arms A B`: two DVC experiments side by side, the answer `make demo` ends with.

    synthvit compare --arms demo-X-synthetic demo-X-scratch [--output-dir plots/demo]

Each arm is the latest pipeline execution (MLflow parent run) of the DVC experiment of
that name. The table: test top-1, top-5 and ECE (the evaluate stage, on the whole test
split), the pre-training accuracy when the arm starts from it, wall seconds of
fine-tuning and of the whole execution, and the difference A - B. Those values are the
headline metrics each parent run carries (execution_summary).

The figure: the pre-training curve (training accuracy per epoch on the fractals; from
the latest pretrain run with the same params when DVC skipped the stage in both arms)
beside both arms' held-out accuracy per fine-tuning epoch on one axis (the test split
when data.val_fraction is 0, as in the demo).

Writes arms.md (the table), arms.csv and arms.png into --output-dir, and logs them to
both parent runs under `comparison/`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from synthvit import compare, execution_summary, tracking
from synthvit.errors import UserError
from synthvit.files import write_csv, write_text

# column -> how it is shown
COLUMNS = {
    "test_top1": "test top-1", "test_top5": "top-5", "test_ece": "ECE", "pretrain_train_acc": "pre-training acc",
    "wall_pretrain_s": "pre-training s", "wall_finetune_s": "fine-tuning s", "wall_total_s": "total s",
}
OUTPUT_NAMES = ("arms.csv", "arms.md", "arms.png")
PRETRAIN_SECTIONS = ("seed", "synthetic", "model", "pretrain")  # the params that define a pre-training


def find_arm(client, experiment_id: str, name: str):
    """The latest pipeline execution of DVC experiment `name` and its stage runs by stage name."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`dvc.exp_name` = '{name}'",
                              order_by=["attributes.start_time DESC"])
    parents = [run for run in runs if tracking.PIPELINE_TAG in run.data.tags]  # the stage runs carry the name too
    if not parents:
        raise UserError(f"no MLflow pipeline run of DVC experiment {name!r}: check the name in `dvc exp show`; if DVC "
                        f"restored its stages from the cache, record them first: synthvit record-restored --name {name}")
    parent = parents[0]
    children = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return parent, {run.info.run_name: run for run in sorted(children, key=lambda r: r.info.start_time)}


def arm_row(name: str, parent) -> dict:
    info, metrics = parent.info, parent.data.metrics
    total = (info.end_time - info.start_time) / 1000 if info.end_time else None
    return {"arm": name, "finetune.init": parent.data.params.get("finetune.init"),
            **{key: metrics.get(key) for key in COLUMNS if key != "wall_total_s"}, "wall_total_s": total}


def arms_table(rows: list[dict]) -> pd.DataFrame:
    """One row per arm, then the difference of the first minus the second."""
    table = pd.DataFrame(rows)
    first, second = table.iloc[0], table.iloc[1]
    difference = {"arm": f"difference ({first['arm']} - {second['arm']})", "finetune.init": ""}
    for key in COLUMNS:
        both = pd.notna(first[key]) and pd.notna(second[key])
        difference[key] = first[key] - second[key] if both else None
    return pd.concat([table, pd.DataFrame([difference])], ignore_index=True)


def markdown(table: pd.DataFrame) -> str:
    shown = table.rename(columns=COLUMNS).astype(object)
    for key, label in COLUMNS.items():
        digits = 1 if key.endswith("_s") else 4
        signs = [""] * (len(table) - 1) + ["+"]  # the difference row shows its sign
        shown[label] = [f"{v:{sign}.{digits}f}" if pd.notna(v) else "" for sign, v in zip(signs, table[key])]
    return shown.fillna("").to_markdown(index=False, disable_numparse=True,
                                        colalign=["left", "left"] + ["right"] * len(COLUMNS))


def history(client, run, key: str) -> pd.DataFrame:
    points = client.get_metric_history(run.info.run_id, key) if run is not None else []
    return pd.DataFrame({"epoch": [p.step for p in points], key: [p.value for p in points]}).sort_values("epoch")


def pretrain_run(client, experiment_id: str, arms: list[tuple[str, object, dict]]):
    """The pre-training run behind the arms: theirs, else the latest one with the same pre-training params.

    DVC skips an unchanged pretrain stage (e.g. on a second `make demo`), so neither arm may have run it.
    """
    ran = [stages["pretrain"] for _, _, stages in arms if "pretrain" in stages]
    if ran:
        return ran[0]
    params = arms[0][1].data.params
    defining = {k: v for k, v in params.items() if k.split(".")[0] in PRETRAIN_SECTIONS}
    for run in client.search_runs([experiment_id], "attributes.run_name = 'pretrain' and attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=50):
        parent = client.get_run(run.data.tags["mlflow.parentRunId"]).data.params
        if defining and all(parent.get(k) == v for k, v in defining.items()):
            return run
    return None


def curves_figure(client, experiment_id: str, arms: list[tuple[str, object, dict]], path: Path) -> Path:
    from synthvit import plots  # sets the Agg backend

    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_pre, ax_fine) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 1.4]})
    curve = history(client, pretrain_run(client, experiment_id, arms), "train_acc")
    if curve.empty:
        ax_pre.text(0.5, 0.5, "no MLflow run of this pre-training", ha="center", va="center", transform=ax_pre.transAxes)
    else:
        ax_pre.plot(curve["epoch"], curve["train_acc"], marker=".", color="tab:gray")
    ax_pre.set(xlabel="epoch", ylabel="training accuracy", title="Pre-training on fractals", ylim=(0, 1))
    on_test = all(parent.data.params.get("data.val_fraction", "0.0") in ("0", "0.0") for _, parent, _ in arms)
    for name, parent, stages in arms:
        curve = history(client, stages.get("finetune"), "eval_acc")
        label = f"{name} ({parent.data.params.get('finetune.init', '?')})"
        ax_fine.plot(curve["epoch"], curve["eval_acc"], marker=".", label=label)
    held_out = "test" if on_test else "validation"
    # The curve may score fewer images than the table's test top-1 (finetune.curve_test_per_class): say how many.
    counts = {stages["finetune"].data.metrics.get("final_eval_images") if "finetune" in stages else None
              for _, _, stages in arms}
    scored = f" ({int(counts.pop()):,} images)" if len(counts) == 1 and None not in counts else ""
    ax_fine.set(xlabel="fine-tuning epoch", ylabel=f"{held_out} top-1", title=f"Fine-tuning: {held_out} accuracy per epoch{scored}")
    for ax in (ax_pre, ax_fine):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_fine.legend()
    return plots.save(fig, path)


def run(args) -> int:
    first, second = args.arms
    if first == second:
        raise UserError(f"--arms needs two different experiments, got {first!r} twice")
    if args.source == "dvc" or args.filter or args.last or args.all:
        raise UserError("--arms names its two experiments and reads MLflow: leave out --source dvc, --filter, --last and --all")
    folder = args.output_dir
    compare.check_output_dir(folder, args.force, OUTPUT_NAMES)
    uri = tracking.tracking_uri()
    experiment = compare.open_mlflow_experiment(uri, args.experiment or compare.default_experiment())
    client = tracking.open_client(uri)
    arms = [(name, *find_arm(client, experiment.experiment_id, name)) for name in args.arms]
    table = arms_table([arm_row(name, parent) for name, parent, _ in arms])
    write_text(folder / compare.MARKER, "Files here are written by `synthvit compare`, which replaces them on each run.\n")
    text = markdown(table)
    paths = [write_csv(folder / "arms.csv", table),
             write_text(folder / "arms.md", f"# {first} against {second}\n\n{text}\n\n![accuracy per epoch](arms.png)\n"),
             curves_figure(client, experiment.experiment_id, arms, folder / "arms.png")]
    for _, parent, _ in arms:
        for path in paths:
            client.log_artifact(parent.info.run_id, str(path), artifact_path="comparison")
    print(text)
    print(f"\nwrote {', '.join(str(p) for p in paths)} (also logged to both pipeline runs in MLflow, under comparison/)")
    serve = "" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}, then open "
    print(f"MLflow: {serve}{execution_summary.ui_url(uri, experiment.experiment_id)}")
    return 0

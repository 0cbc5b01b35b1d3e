"""What the pretrain and finetune stages share: once `engine.train` has run, write and log the results.

Outputs (files.py, declared the same way in dvc.yaml): models/<stage>.pt,
metrics/<stage>.json, plots/<stage>/history.csv. They depend only on the params, the
data and the seed: two runs give the same bytes. How long training took and on what
machine goes to the stage's timing file (pipeline.py) and to MLflow instead.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from torch import nn

from synthvit.config import Params
from synthvit.data.images import ImageSet, TensorImages
from synthvit.errors import DISK_ERRORS, UserError, fix_for
from synthvit.files import checkpoint_path, history_path, metrics_path, write_csv, write_json
from synthvit.models import save_checkpoint
from synthvit.training import distributed

# Per-epoch figures that depend on the machine's load, not on what was learned: logged to
# MLflow and the timing file, kept out of history.csv.
TIMING_KEYS = ("epoch_seconds", "train_images_per_s")


def recipe(stage: str, params: Params) -> dict:
    """The params that made a stage's model, stored in its checkpoint (what `synthvit export` puts on the
    model card): exactly the sections dvc.yaml declares for the stage, and the fractals for pre-training."""
    sections = {
        "seed": params.seed,
        "model": params.model.model_dump(),
        stage: getattr(params, stage).model_dump(),
        "runtime": params.runtime.model_dump(include={"device", "precision", "deterministic"}),
    }
    if stage == "pretrain":
        sections["synthetic"] = params.synthetic.model_dump()
    else:
        sections["data"] = params.data.model_dump(exclude={"num_workers", "download"})
    return sections


def record_training(
    stage,  # what pipeline.stage_context yields: name, params, run, timing, check_params_unchanged()
    model: nn.Module,
    train_set: ImageSet,
    history: list[dict],
    resume_file: Path,
    eval_set: TensorImages | None = None,
    backbone: dict | None = None,
) -> dict:
    """After `engine.train`: save the model's checkpoint, history and summary metrics, log them to the stage's
    MLflow run, put the timing figures in `stage.timing`; returns the summary. `backbone`: the recipe of the
    pre-trained checkpoint the model started from, kept in the new one too.

    Outputs are written only if params.yaml still holds what the stage started with. The resume state
    goes only once every output is written: a disk that fills while the checkpoint is written, or
    params changed under the stage, stop it with one line, and the next run resumes from the state.
    """
    params, run = stage.params, stage.run
    num_parameters = sum(p.numel() for p in model.parameters())
    run.log_params(
        {
            "model.num_parameters": num_parameters,
            "data.train_images": len(train_set),
            "data.num_classes": train_set.num_classes,
        }
    )
    last = next(h for h in history if h["selected"])  # the epoch whose weights the model ends with
    summary = {
        "selected_epoch": last["epoch"],
        "train_loss": last["train_loss"],
        "train_acc": last["train_acc"],
        **(
            {"eval_acc": last["eval_acc"], "eval_loss": last["eval_loss"], "eval_images": len(eval_set)}
            if "eval_acc" in last
            else {}
        ),
        "epochs": len(history),
        "train_images": len(train_set),
        "num_parameters": num_parameters,
    }
    # Epochs restored from a resume state carry no timing of this run.
    timed = [h for h in history if "epoch_seconds" in h]
    seconds = sum(h["epoch_seconds"] for h in timed)
    images = sum(h["train_images_per_s"] * h["epoch_seconds"] for h in timed)
    timing = {
        "train_images_per_s": round(images / seconds, 2) if seconds else None,
        "epoch_seconds": [round(h["epoch_seconds"], 2) for h in timed],
    }
    stage.timing.update(timing)
    if not distributed.is_main():
        return summary  # under torchrun, process 0 writes the outputs
    stage.check_params_unchanged()
    name = stage.name
    try:
        made_by = {**recipe(name, params), **({"backbone": backbone} if backbone else {})}
        save_checkpoint(
            checkpoint_path(name), model, params.model, train_set.classes, stage=name, summary=summary, recipe=made_by
        )
        write_csv(history_path(name), pd.DataFrame(history).drop(columns=list(TIMING_KEYS), errors="ignore"))
        write_json(metrics_path(name), summary)
    except OSError as exc:  # atomic_write names the output and turns torch's RuntimeErrors into these
        if exc.errno not in DISK_ERRORS:
            raise
        kept = (
            f"`dvc repro` writes its outputs without training again (the trained state is kept in {resume_file})"
            if resume_file.is_file()
            else f"`dvc repro` trains again ({name}.checkpoint_every is 0: no state was kept)"
        )
        raise UserError(
            f"{name} trained but could not write {exc.filename} ({DISK_ERRORS[exc.errno]}); "
            f"{fix_for(exc.errno)}, then {kept}"
        ) from None
    resume_file.unlink(missing_ok=True)
    run.log_metrics({f"final_{k}": float(v) for k, v in summary.items()})
    if timing["train_images_per_s"] is not None:
        run.log_metric("final_train_images_per_s", timing["train_images_per_s"])
    run.log_artifact(str(history_path(name)))
    return summary

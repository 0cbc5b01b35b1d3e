"""What the pretrain and finetune stages share: train, then write and log the results.

Output paths (models/<stage>.pt, metrics/<stage>.json, plots/<stage>/history.csv) are
fixed in paths.py and declared the same way in dvc.yaml.
"""

from __future__ import annotations

import hashlib
import os

import pandas as pd
from torch import nn

from synthvit import distributed
from synthvit.config import Params, TrainConfig
from synthvit.data import ImageSet
from synthvit.engine import train
from synthvit.files import write_csv, write_json
from synthvit.models import count_parameters, save_checkpoint
from synthvit.paths import checkpoint_path, history_path, metrics_path
from synthvit.resume import resume_path
from synthvit.timing import write_timing

# Per-epoch figures that depend on the machine's load, not on what was learned: logged to
# MLflow and the stage's timing file, kept out of history.csv (byte-identical across runs).
TIMING_KEYS = ("epoch_seconds", "train_images_per_s")

def tensor_digest(*tensors) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def data_digest(data: ImageSet) -> str:
    """The pixels and labels; for a streamed set, its files' paths, sizes and mtimes (a rendered
    set: its manifest and which images)."""
    if data.source is not None:
        return data.source.digest
    if not data.streamed:
        return tensor_digest(data.images, data.labels)
    sha = hashlib.sha256(tensor_digest(data.labels).encode())
    for path in data.paths:
        stat = os.stat(path)
        sha.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return sha.hexdigest()


def training_fingerprint(model: nn.Module, train_set: ImageSet, train_cfg: TrainConfig, params: Params) -> dict:
    """What must match for a saved training state to be resumed: recipe, data and starting weights."""
    runtime = params.runtime.model_dump()
    runtime.pop("num_threads")
    return {
        "train": train_cfg.model_dump(),
        "model": params.model.model_dump(),
        "runtime": runtime,
        "seed": params.seed,
        "data": data_digest(train_set),
        "initial_weights": tensor_digest(*model.state_dict().values()),
    }


def train_and_record(
    stage: str,
    model: nn.Module,
    train_set: ImageSet,
    train_cfg: TrainConfig,
    params: Params,
    mlflow,
    eval_set: ImageSet | None = None,
    keep_best: bool = False,
) -> dict:
    """Train `model`, save its checkpoint, history and summary metrics; log all to the active run."""
    num_parameters = count_parameters(model)
    mlflow.log_params({"model.num_parameters": num_parameters, "data.train_images": len(train_set),
                       "data.num_classes": train_set.num_classes})
    history = train(
        model, train_set, train_cfg, params.runtime, params.seed, eval_set=eval_set,
        on_epoch=lambda metrics: mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=metrics["epoch"]),
        desc=stage,
        resume_file=resume_path(stage, training_fingerprint(model, train_set, train_cfg, params)),
        keep_best=keep_best,
        num_workers=params.data.num_workers,
    )
    last = next(h for h in history if h["selected"])  # the epoch whose weights the model ends with
    summary = {
        "selected_epoch": last["epoch"],
        "train_loss": last["train_loss"],
        "train_acc": last["train_acc"],
        **({"eval_acc": last["eval_acc"], "eval_loss": last["eval_loss"], "eval_images": len(eval_set)}
           if "eval_acc" in last else {}),
        "epochs": len(history),
        "train_images": len(train_set),
        "num_parameters": num_parameters,
    }
    seconds = [h["epoch_seconds"] for h in history]
    images_per_s = sum(h["train_images_per_s"] * t for h, t in zip(history, seconds)) / sum(seconds)
    if not distributed.is_main():
        return summary  # under torchrun, process 0 writes the outputs
    save_checkpoint(checkpoint_path(stage), model, params.model, train_set.classes, stage=stage, summary=summary)
    write_csv(history_path(stage), pd.DataFrame(history).drop(columns=list(TIMING_KEYS)))
    write_json(metrics_path(stage), summary)
    timing = write_timing(stage, train_images_per_s=round(images_per_s, 2), epoch_seconds=[round(t, 2) for t in seconds])
    mlflow.log_metrics({f"final_{k}": float(v) for k, v in summary.items()})
    mlflow.log_metric("final_train_images_per_s", images_per_s)
    mlflow.log_artifact(str(timing))
    mlflow.log_artifact(str(history_path(stage)))
    return summary

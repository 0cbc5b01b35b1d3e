"""The MLflow model of a fine-tuned network, the registry's versions, and the serving alias.

Every fine-tune is logged as an MLflow PyTorch model and registered as a new version of
`tracking.registered_model`. The alias (`tracking.model_alias`, `current`) is what
`synthvit predict --model models:/NAME@ALIAS` and the app serve, so it never moves to a
worse model: it moves to the new version only when that version scores at least as well
as the one it points at on the same held-out images (finetune's eval_acc on the
validation split, or on the test curve's images when data.val_fraction is 0), or when
the two were scored on different images (another dataset or split: not comparable).
Each version carries its score and held-out set as tags, its arm (finetune.init) and the
model in words (timm's name alone does not say depth, width or input size), and says all
that in its description; evaluate, which runs after finetune registered the version, adds
the test top-1 (`record_test_score`). The logged model has a signature and an input example:
float32 images N x 3 x S x S, normalised as the checkpoint says, to logits.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
from pathlib import Path

import mlflow
import numpy as np
import timm
import torch
from mlflow import MlflowClient

from synthvit.tracking import health
from synthvit.tracking.store import GIT_COMMIT_TAG, store_lock

SCORE_TAG = "synthvit.heldout_acc"  # the version's held-out top-1 when it was fine-tuned
HELDOUT_TAG = "synthvit.heldout"  # which images that score is on (a digest of the held-out set)
ARM_TAG = "synthvit.arm"  # finetune.init: what the fine-tuning started from
MODEL_TAG = "synthvit.model"  # the model in words (config.ModelConfig.summary)
CHECKPOINT_TAG = "synthvit.checkpoint"  # a digest of the checkpoint: how evaluate finds the version
TEST_TAG = "synthvit.test_top1"  # evaluate's test top-1


def log_model(
    model,
    checkpoint: Path,
    registered_model: str = "",
    alias: str = "",
    score: float | None = None,
    heldout: str = "",
    arm: str = "",
    model_summary: str = "",
    input_example: np.ndarray | None = None,
) -> str | None:
    """Log the model on the active run as an MLflow PyTorch model, with the synthvit checkpoint beside it
    and, from `input_example` (normalised float32 images), its signature; with `registered_model`, register
    it (`register_model`). Returns the registered version, or None.

    Pickle serialisation (not mlflow 3's pt2 default, which traces the model with torch.export)
    loads back as the same nn.Module; the checkpoint carries the class names and
    normalisation that `synthvit predict` needs. Requirements are given explicitly so MLflow
    does not spend time inferring them.
    """
    # MLflow warns about pickle on every save; the choice is deliberate (see above).
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    model = model.to("cpu").eval()  # MLflow runs it on the input example for the signature
    about = {ARM_TAG: arm, MODEL_TAG: model_summary, CHECKPOINT_TAG: file_digest(checkpoint)}
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"],
        extra_files=[str(checkpoint)],
        input_example=input_example,
        tags={key: value for key, value in about.items() if value},
    )
    if not registered_model:
        return None
    return register_model(info.model_uri, registered_model, alias, score, heldout, about)


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def describe(tags: dict) -> str:
    """A version's description, from its tags: the arm, the model in words, its scores."""
    parts = [f"finetune.init={tags[ARM_TAG]}" if tags.get(ARM_TAG) else "", tags.get(MODEL_TAG, "")]
    scores = ((SCORE_TAG, "held-out top-1"), (TEST_TAG, "test top-1"))
    parts += [f"{label} {float(tags[tag]):.4f}" for tag, label in scores if tag in tags]
    return "; ".join(part for part in parts if part)


def register_model(model_uri: str, name: str, alias: str, score: float | None, heldout: str, about: dict) -> str:
    """A new version of registered model `name` from `model_uri`, with the `about` tags and a description;
    `alias` moves to it unless the version it points at scored better on the same held-out images.

    Under the store lock: parallel experiments (`dvc queue start -j N`) may register the
    first version of one name, or move its alias, at the same time.
    """
    run = mlflow.active_run()
    tags = {k: v for k, v in (run.data.tags.items() if run else ()) if k.startswith("dvc.")}
    if run and GIT_COMMIT_TAG in run.data.tags:
        tags["git.commit"] = run.data.tags[GIT_COMMIT_TAG]  # model versions get no mlflow.source.* tags of their own
    if score is not None:
        tags.update({SCORE_TAG: f"{score:.6f}", HELDOUT_TAG: heldout})
    tags.update({key: value for key, value in about.items() if value})
    client = MlflowClient()
    with store_lock(mlflow.get_tracking_uri()):
        version = mlflow.register_model(model_uri, name, tags=tags or None)
        client.update_model_version(name, version.version, describe(tags))
        aliases = client.get_registered_model(name).aliases  # {alias: version}
        serving = client.get_model_version(name, aliases[alias]) if alias in aliases else None
        kept = serving is not None and better_than(serving, score, heldout)
        if alias and not kept:
            client.set_registered_model_alias(name, alias, version.version)
    registered = f"registered model {name} version {version.version}"
    if kept:
        print(
            f"{registered}; models:/{name}@{alias} stays on version {serving.version}, which scored "
            f"{float(serving.tags[SCORE_TAG]):.4f} on the same held-out images (this one {score:.4f})"
        )
    else:
        print(registered + (f" as models:/{name}@{alias}" if alias else ""))
    return str(version.version)


def better_than(serving, score: float | None, heldout: str) -> bool:
    """Whether the serving version scored strictly better than `score` on the same held-out images."""
    if score is None or serving.tags.get(HELDOUT_TAG) != heldout or SCORE_TAG not in serving.tags:
        return False
    served = float(serving.tags[SCORE_TAG])
    return math.isfinite(served) and served > score


def record_test_score(name: str, checkpoint: Path, top1: float) -> None:
    """Evaluate's test top-1 on the versions of `name` registered from this checkpoint (a tag, and in the
    description); nothing when there are none. Never fails the stage: its outputs are written by then."""
    try:
        of_checkpoint = f"name = '{name}' and tags.`{CHECKPOINT_TAG}` = '{file_digest(checkpoint)}'"
        with health.quick_http():  # one short attempt: a server that is away costs seconds, not minutes
            client = MlflowClient()
            for version in client.search_model_versions(of_checkpoint):
                client.set_model_version_tag(name, version.version, TEST_TAG, f"{top1:.6f}")
                client.update_model_version(name, version.version, describe({**version.tags, TEST_TAG: top1}))
    except Exception as exc:  # noqa: BLE001 - the registry is a convenience; the stage's results are written
        print(f"warning: could not add the test top-1 to registered model {name!r}: {exc}", file=sys.stderr)

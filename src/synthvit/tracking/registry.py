"""The MLflow model of a fine-tuned network, the registry's versions, and the serving alias.

Every fine-tune is logged as an MLflow PyTorch model and registered as a new version of
`tracking.registered_model`. The alias (`tracking.model_alias`, `current`) is what
`synthvit predict --model models:/NAME@ALIAS` and the app serve, so it never moves to a
worse model: it moves to the new version only when that version scores at least as well
as the one it points at on the same held-out images (finetune's eval_acc on the
validation split, or on the test curve's images when data.val_fraction is 0), or when
the two were scored on different images (another dataset or split: not comparable).
Each version carries its score and held-out set as tags.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import mlflow
import timm
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from synthvit.tracking.store import GIT_COMMIT_TAG, store_lock

SCORE_TAG = "synthvit.heldout_acc"  # the version's held-out top-1 when it was fine-tuned
HELDOUT_TAG = "synthvit.heldout"  # which images that score is on (a digest of the held-out set)


def log_model(
    model, checkpoint: Path, registered_model: str = "", alias: str = "", score: float | None = None, heldout: str = ""
) -> str | None:
    """Log the model on the active run as an MLflow PyTorch model, with the synthvit checkpoint beside it;
    with `registered_model`, register it (`register_model`). Returns the registered version, or None.

    Pickle serialisation (not mlflow 3's pt2 default, which needs torch.export and an
    input example) loads back as the same nn.Module; the checkpoint carries the class
    names and normalisation that `synthvit predict` needs. Requirements are given
    explicitly so MLflow does not spend time inferring them.
    """
    # MLflow warns about pickle on every save; the choice is deliberate (see above).
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    info = mlflow.pytorch.log_model(
        model.to("cpu").eval(),
        name="model",
        serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"],
        extra_files=[str(checkpoint)],
    )
    if not registered_model:
        return None
    return register_model(info.model_uri, registered_model, alias, score, heldout)


def register_model(model_uri: str, name: str, alias: str = "", score: float | None = None, heldout: str = "") -> str:
    """A new version of registered model `name` from `model_uri`; `alias` moves to it unless the
    version it points at scored better on the same held-out images.

    Under the store lock: parallel experiments (`dvc queue start -j N`) may register the
    first version of one name, or move its alias, at the same time.
    """
    run = mlflow.active_run()
    tags = {k: v for k, v in (run.data.tags.items() if run else ()) if k.startswith("dvc.")}
    if run and GIT_COMMIT_TAG in run.data.tags:
        tags["git.commit"] = run.data.tags[GIT_COMMIT_TAG]  # model versions get no mlflow.source.* tags of their own
    if score is not None:
        tags.update({SCORE_TAG: f"{score:.6f}", HELDOUT_TAG: heldout})
    client = MlflowClient()
    with store_lock(mlflow.get_tracking_uri()):
        version = mlflow.register_model(model_uri, name, tags=tags or None)
        if not alias:
            print(f"registered model {name} version {version.version}")
            return str(version.version)
        serving = aliased_version(client, name, alias)
        kept = serving is not None and better_than(serving, score, heldout)
        if not kept:
            client.set_registered_model_alias(name, alias, version.version)
    if kept:
        print(
            f"registered model {name} version {version.version}; models:/{name}@{alias} stays on version "
            f"{serving.version}, which scored {float(serving.tags[SCORE_TAG]):.4f} on the same held-out images "
            f"(this one {score:.4f})"
        )
    else:
        print(f"registered model {name} version {version.version} as models:/{name}@{alias}")
    return str(version.version)


def aliased_version(client, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such alias yet
        return None


def better_than(serving, score: float | None, heldout: str) -> bool:
    """Whether the serving version scored strictly better than `score` on the same held-out images."""
    if score is None or serving.tags.get(HELDOUT_TAG) != heldout or SCORE_TAG not in serving.tags:
        return False
    served = float(serving.tags[SCORE_TAG])
    return math.isfinite(served) and served > score

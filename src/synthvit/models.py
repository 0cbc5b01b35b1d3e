"""timm model factory and checkpoints.

A checkpoint is plain data (tensors, numbers, strings) so it loads with
`torch.load(weights_only=True)`: the model's state, the model params that rebuild it,
the class names and the input normalisation.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import timm
import torch
from torch import nn

from synthvit.config import ModelConfig
from synthvit.errors import UserError

# Normalisation for models trained here: maps [0, 1] pixels to [-1, 1].
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
CHECKPOINT_FORMAT = 1


def model_kwargs(cfg: ModelConfig) -> dict:
    """Keyword overrides for timm.create_model; null params keep the model's default."""
    keys = ("img_size", "patch_size", "embed_dim", "depth", "num_heads")
    kwargs = {k: getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}
    kwargs["drop_path_rate"] = cfg.drop_path_rate
    return kwargs


def create_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    if not timm.is_model(cfg.name):
        close = timm.list_models(f"*{cfg.name.split('_')[0]}*")[:8]
        raise UserError(
            f"params.yaml: model.name={cfg.name!r} is invalid: not a timm model"
            + (f"; similar names: {', '.join(close)}" if close else "; see timm.list_models()")
        )
    kwargs = model_kwargs(cfg)
    try:
        try:
            return timm.create_model(cfg.name, pretrained=False, num_classes=num_classes, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            # CNNs take any resolution and have no img_size argument: the data still uses it.
            kwargs.pop("img_size")
            return timm.create_model(cfg.name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise UserError(
            f"params.yaml: model.name={cfg.name!r} does not take these overrides ({exc}); "
            "set the ones it does not use (patch_size, embed_dim, depth, num_heads) to null"
        ) from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(path: Path, model: nn.Module, cfg: ModelConfig, classes: list[str], **extra) -> None:
    """Write atomically: a crash never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model_state": state,
        "model_config": dataclasses.asdict(cfg),
        "classes": list(classes),
        "mean": list(DEFAULT_MEAN),
        "std": list(DEFAULT_STD),
        **extra,
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: run the stage that writes it first (dvc repro)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot load checkpoint {path} ({type(exc).__name__}: {exc}); is it a synthvit checkpoint?") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a synthvit checkpoint (format {CHECKPOINT_FORMAT})")
    return checkpoint


def model_from_checkpoint(checkpoint: dict) -> nn.Module:
    """Rebuild the model a checkpoint was saved from, with its weights."""
    cfg = ModelConfig(**checkpoint["model_config"])
    model = create_model(cfg, num_classes=len(checkpoint["classes"]))
    model.load_state_dict(checkpoint["model_state"])
    return model


def check_same_architecture(checkpoint: dict, cfg: ModelConfig, source: str) -> None:
    """A pre-trained backbone only fits the model it was trained as (drop-path aside)."""
    saved = dict(checkpoint["model_config"])
    wanted = dataclasses.asdict(cfg)
    saved.pop("drop_path_rate", None)
    wanted.pop("drop_path_rate", None)
    diff = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
    if diff:
        detail = ", ".join(f"model.{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise UserError(f"{source} was trained with another model ({detail}); re-run pretrain (dvc repro) or match the params")


def backbone_with_new_head(checkpoint: dict, cfg: ModelConfig, num_classes: int) -> nn.Module:
    """The pre-trained model with a freshly initialised classifier for num_classes."""
    pretrained_cfg = ModelConfig(**{**checkpoint["model_config"], "drop_path_rate": cfg.drop_path_rate})
    model = create_model(pretrained_cfg, num_classes=len(checkpoint["classes"]))
    model.load_state_dict(checkpoint["model_state"])
    model.reset_classifier(num_classes)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)

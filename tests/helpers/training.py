"""Tiny trained models and separable data for tests."""

from __future__ import annotations

from pathlib import Path

import torch

from synthvit.config import RuntimeConfig, TrainConfig
from synthvit.data.images import TensorImages, load_image_folder
from synthvit.models import create_model, save_checkpoint
from synthvit.training.engine import train


def bright_vs_dark(n=128, seed=0) -> TensorImages:
    """Two classes any model must separate: dark and bright images with noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = torch.where(labels.view(-1, 1, 1, 1) == 1, 180.0, 60.0)
    images = (base + 30 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 255).to(torch.uint8)
    return TensorImages(images=images, labels=labels, classes=["dark", "bright"])


def plain_recipe(**settings) -> TrainConfig:
    """A training recipe without warm-up, Mixup, CutMix or erasing: a tiny model learns in a few epochs."""
    return TrainConfig(**{"warmup_epochs": 0, "mixup_alpha": 0, "cutmix_alpha": 0, "random_erasing": 0, **settings})


def tiny_finetuned_checkpoint(train_folder: Path, path: Path, model_cfg) -> Path:
    """A tiny ViT fine-tuned for a few epochs on the real images in train_folder, saved as a checkpoint."""
    train_set = load_image_folder(train_folder, model_cfg.img_size)
    torch.manual_seed(0)
    model = create_model(model_cfg, num_classes=train_set.num_classes)
    cfg = plain_recipe(epochs=3, batch_size=16, lr=2e-3)
    train(model, train_set, cfg, RuntimeConfig(device="cpu"), seed=0)
    save_checkpoint(path, model, model_cfg, train_set.classes)
    return path

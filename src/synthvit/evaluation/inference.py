"""Inference: a model's logits and class probabilities for uint8 images.

The evaluate stage, `synthvit predict`, the web app and the training curves all score
images through `predict_logits`, so their numbers agree.
"""

from __future__ import annotations

import torch
from torch import nn

from synthvit.data.augment import to_float
from synthvit.models import DEFAULT_MEAN, DEFAULT_STD
from synthvit.runtime import autocast, progress_bar


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 512,
    mean=DEFAULT_MEAN,
    std=DEFAULT_STD,
    desc: str = "predict",
) -> torch.Tensor:
    """Float32 logits on the CPU for a uint8 N x 3 x H x W tensor."""
    model.eval().to(device)
    outputs = []
    for start in progress_bar(range(0, len(images), batch_size), desc=desc, unit="batch"):
        x = to_float(images[start : start + batch_size].to(device), mean, std)
        with autocast(device, amp_dtype):
            outputs.append(model(x).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def class_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    amp_dtype=None,
    batch_size: int = 512,
    mean=DEFAULT_MEAN,
    std=DEFAULT_STD,
    tta_flip: bool = False,
    desc: str = "predict",
) -> torch.Tensor:
    """Softmax probabilities (N x classes, float32) for uint8 N x 3 x S x S images.

    With tta_flip the probabilities of each image and its horizontal mirror are averaged.
    """
    probs = predict_logits(model, images, device, amp_dtype, batch_size, mean, std, desc=desc).softmax(1)
    if tta_flip and len(images):
        flipped = predict_logits(
            model, images.flip(-1), device, amp_dtype, batch_size, mean, std, desc=f"{desc} flipped"
        )
        probs = (probs + flipped.softmax(1)) / 2
    return probs

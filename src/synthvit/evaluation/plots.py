"""Matplotlib figures written as PNG files (headless: the Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from synthvit.files import atomic_write


def save(fig, path: Path) -> Path:
    """Write a figure atomically (a killed stage leaves no truncated PNG) and close it. The figure
    functions here return figures, so tests read their data back; callers save them."""
    path = Path(path)
    try:
        kind = path.suffix.lstrip(".") or "png"  # the temporary file's name has no suffix to infer it from
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=kind, dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def training_curves(history: pd.DataFrame, title: str):
    """Loss and accuracy per epoch, train and (when present) held-out, on two panels."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        for column, label in ((f"train_{metric}", "train"), (f"eval_{metric}", "held-out")):
            if column in history:
                ax.plot(history["epoch"], history[column], marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def confusion_matrix(matrix: np.ndarray, classes: list[str], title: str = "Confusion matrix"):
    """Row-normalised heat map, true class on the y axis, with counts written in each cell (when the classes fit)."""
    matrix = np.asarray(matrix)
    n = len(classes)
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    size = max(5.0, min(0.55 * n + 2, 30))
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                color = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return fig


def image_grid(images: np.ndarray, titles: list[str], title: str, columns: int = 8):
    """A grid of HxWx3 uint8 images with a caption under each."""
    count = len(images)
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.6 * columns, 1.8 * rows + 0.4), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, titles):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title)
    return fig


def message_figure(message: str, title: str):
    """A figure that says in words why there is nothing to draw (the stage still writes the file it declares)."""
    fig, ax = plt.subplots(figsize=(6, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11)
    fig.suptitle(title)
    return fig

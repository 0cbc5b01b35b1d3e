"""Classification metrics from logits (scikit-learn does the counting)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Top-1, top-5, macro and per-class precision/recall/F1, and the confusion matrix."""
    y_true = labels.numpy()
    scores = logits.float().numpy()
    y_pred = scores.argmax(1)
    all_labels = np.arange(len(classes))
    k = min(5, len(classes) - 1) if len(classes) > 2 else 1
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=all_labels, zero_division=0)
    top1 = float((y_pred == y_true).mean())
    return {
        "top1": top1,
        "top5": float(top_k_accuracy_score(y_true, scores, k=k, labels=all_labels)) if k > 1 else top1,
        "top5_k": k,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "num_images": int(len(y_true)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=all_labels).tolist(),
    }

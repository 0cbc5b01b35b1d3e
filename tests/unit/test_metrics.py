import numpy as np
import torch

from synthvit.evaluation.metrics import classification_report


def test_report_values_on_known_predictions():
    classes = ["a", "b", "c", "d", "e", "f"]
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    logits = torch.full((6, 6), -5.0)
    predicted = [0, 1, 1, 1, 2, 0]  # two mistakes: sample 1 (0->1), sample 5 (3->0)
    for i, p in enumerate(predicted):
        logits[i, p] = 5.0
    logits[5, 3] = 4.0  # the true class is second best: inside top-5
    logits[1, 0] = 4.0
    report = classification_report(logits, labels, classes)
    assert report["top1"] == 4 / 6
    assert report["top5"] == 1.0 and report["top5_k"] == 5
    assert report["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert report["per_class"]["b"]["precision"] == 2 / 3 and report["per_class"]["b"]["recall"] == 1.0
    assert report["per_class"]["d"]["recall"] == 0.0
    assert report["per_class"]["f"]["support"] == 0  # absent class: zeros, no warning noise
    confusion = np.array(report["confusion"])
    assert confusion.shape == (6, 6) and confusion.sum() == 6
    assert confusion[0, 1] == 1 and confusion[3, 0] == 1 and np.trace(confusion) == 4

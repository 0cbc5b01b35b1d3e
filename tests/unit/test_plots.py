"""The figures a person looks at first show the numbers they are drawn from (read back from the figure)."""

import numpy as np
import pandas as pd

from synthvit.evaluation import plots


def test_training_curves_show_loss_and_accuracy_apart():
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [2.0, 1.5, 1.2],
            "train_acc": [0.2, 0.4, 0.5],
            "eval_loss": [1.9, 1.6, 1.4],
            "eval_acc": [0.25, 0.35, 0.45],
        }
    )
    loss, accuracy = plots.training_curves(history, "finetune").axes
    assert {line.get_label(): list(line.get_ydata()) for line in loss.get_lines()} == {
        "train": [2.0, 1.5, 1.2],
        "held-out": [1.9, 1.6, 1.4],
    }
    assert {line.get_label(): list(line.get_ydata()) for line in accuracy.get_lines()} == {
        "train": [0.2, 0.4, 0.5],
        "held-out": [0.25, 0.35, 0.45],
    }
    assert (loss.get_ylabel(), accuracy.get_ylabel(), accuracy.get_ylim()) == ("loss", "accuracy", (0, 1))


def test_the_confusion_matrix_has_the_true_class_on_the_y_axis():
    matrix = np.array([[8, 2], [1, 9]])  # rows: true class
    ax = plots.confusion_matrix(matrix, ["cat", "dog"]).axes[0]
    shown = ax.get_images()[0].get_array()
    assert np.allclose(shown, [[0.8, 0.2], [0.1, 0.9]])  # each row sums to one: the true class
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("true", "predicted")
    assert [t.get_text() for t in ax.texts] == ["8", "2", "1", "9"]


def test_an_image_grid_captions_each_image():
    images = np.zeros((3, 4, 4, 3), np.uint8)
    images[1] = 255
    figure = plots.image_grid(images, ["a", "b", "c"], "grid", columns=2)
    shown = [(ax.get_title(), ax.get_images()[0].get_array().max()) for ax in figure.axes if ax.get_images()]
    assert shown == [("a", 0), ("b", 255), ("c", 0)] and figure._suptitle.get_text() == "grid"

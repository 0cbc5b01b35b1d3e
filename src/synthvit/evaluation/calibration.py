"""Calibration: does a confidence of 0.8 mean right 80% of the time?

Expected calibration error (Guo et al., 2017): split predictions into equal-width
confidence bins over [0, 1]; ECE is the sum over bins of (bin size / N) times
|accuracy in the bin - mean confidence in the bin|. The same bins draw the
reliability diagram.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synthvit.evaluation.plots import plt

ECE_BINS = 15


def reliability_bins(confidences, correct, num_bins: int = ECE_BINS) -> pd.DataFrame:
    """One row per equal-width bin: its range, count, accuracy and mean confidence.

    A confidence c falls into bin i when lower_i < c <= upper_i (the first bin also
    takes c == 0), as in the usual ECE implementations. Empty bins have count 0 and
    NaN accuracy and confidence.
    """
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidences.shape != correct.shape or confidences.ndim != 1:
        raise ValueError(f"confidences {confidences.shape} and correct {correct.shape} must be 1-D and equal in length")
    if num_bins < 1:
        raise ValueError(f"num_bins={num_bins} must be >= 1")
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # right=True puts c into the bin whose upper edge is >= c; clip folds c == 0 into bin 0.
    index = np.clip(np.digitize(confidences, edges[1:-1], right=True), 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=num_bins) / count
        confidence = np.bincount(index, weights=confidences, minlength=num_bins) / count
    return pd.DataFrame(
        {
            "bin": np.arange(num_bins),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count,
            "accuracy": accuracy,
            "confidence": confidence,
        }
    )


def expected_calibration_error(confidences, correct, num_bins: int = ECE_BINS) -> float:
    """ECE in [0, 1]: the count-weighted mean |accuracy - confidence| over the bins."""
    bins = reliability_bins(confidences, correct, num_bins)
    total = bins["count"].sum()
    if total == 0:
        return float("nan")
    filled = bins[bins["count"] > 0]
    return float((filled["count"] * (filled["accuracy"] - filled["confidence"]).abs()).sum() / total)


def reliability_diagram(bins: pd.DataFrame, ece: float, title: str = "Reliability diagram"):
    """Accuracy per confidence bin against the diagonal of perfect calibration, with the bin counts below."""
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = bins["upper"] - bins["lower"]
    filled = bins["count"] > 0
    columns = {"x": bins["lower"][filled], "width": width[filled], "align": "edge"}
    ax.bar(**columns, height=bins["accuracy"][filled], edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy")
    gap_bottom = np.minimum(bins["accuracy"], bins["confidence"])[filled]
    gap_height = (bins["accuracy"] - bins["confidence"]).abs()[filled]
    gap_style = {"edgecolor": "tab:red", "color": "tab:red", "alpha": 0.25, "hatch": "//", "label": "gap to confidence"}
    ax.bar(**columns, height=gap_height, bottom=gap_bottom, **gap_style)
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title} (ECE {ece:.3f}, {len(bins)} bins)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax_count.bar(bins["lower"], bins["count"], width=width, align="edge", edgecolor="black", color="gray")
    ax_count.set(xlabel="confidence", ylabel="images")
    ax_count.grid(alpha=0.3)
    return fig

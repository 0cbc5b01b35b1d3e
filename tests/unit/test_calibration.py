"""Expected calibration error and the reliability diagram, against hand-computed values."""

import numpy as np
import pytest

from synthvit.config import parse_params
from synthvit.errors import ConfigError
from synthvit.evaluation.calibration import ECE_BINS, expected_calibration_error, reliability_bins, reliability_diagram


def textbook_ece(confidences, correct, num_bins):
    """ECE written out the way Guo et al. define it: a loop over (lower, upper] bins."""
    confidences, correct = np.asarray(confidences, float), np.asarray(correct, float)
    edges = np.linspace(0, 1, num_bins + 1)
    total = 0.0
    for i, (lower, upper) in enumerate(zip(edges[:-1], edges[1:])):
        in_bin = (confidences > lower) & (confidences <= upper)
        if i == 0:
            in_bin |= confidences == 0
        if in_bin.any():
            total += in_bin.sum() * abs(correct[in_bin].mean() - confidences[in_bin].mean())
    return total / len(confidences)


def test_ece_by_hand():
    # Two bins of width 0.5: (0, 0.5] holds 0.2 (wrong) and 0.4 (right): accuracy 0.5, confidence 0.3.
    # (0.5, 1] holds 0.9 and 0.7 (both right): accuracy 1, confidence 0.8.
    # ECE = 2/4 * |0.5 - 0.3| + 2/4 * |1 - 0.8| = 0.1 + 0.1 = 0.2
    ece = expected_calibration_error([0.2, 0.4, 0.9, 0.7], [0, 1, 1, 1], num_bins=2)
    assert ece == pytest.approx(0.2)
    bins = reliability_bins([0.2, 0.4, 0.9, 0.7], [0, 1, 1, 1], num_bins=2)
    assert bins["count"].tolist() == [2, 2]
    assert bins["accuracy"].tolist() == pytest.approx([0.5, 1.0])
    assert bins["confidence"].tolist() == pytest.approx([0.3, 0.8])


def test_perfectly_calibrated_is_zero_and_overconfident_is_the_gap():
    confidences = np.full(10, 0.7)
    assert expected_calibration_error(confidences, [1] * 7 + [0] * 3) == pytest.approx(0.0)
    # Always 0.95 sure, right half the time: the gap is 0.45.
    assert expected_calibration_error(np.full(8, 0.95), [1, 0] * 4) == pytest.approx(0.45)


def test_matches_the_textbook_loop_on_random_data_and_bin_edges():
    rng = np.random.default_rng(0)
    confidences = np.concatenate(
        [rng.uniform(0.1, 1.0, 500), np.arange(ECE_BINS + 1) / ECE_BINS]
    )  # every edge, 0 and 1
    correct = rng.uniform(size=len(confidences)) < confidences
    ours = expected_calibration_error(confidences, correct)
    assert ours == pytest.approx(textbook_ece(confidences, correct, ECE_BINS), abs=1e-12)
    bins = reliability_bins(confidences, correct)
    assert len(bins) == 15 and bins["count"].sum() == len(confidences)
    # An edge value k/15 belongs to the bin whose upper edge it is.
    one_third = reliability_bins([5 / 15], [1])
    assert one_third.loc[one_third["count"] == 1, "upper"].item() == pytest.approx(5 / 15)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"confidences \(2,\) and correct \(1,\) must be 1-D and equal in length"):
        reliability_bins([0.5, 0.6], [1])
    with pytest.raises(ValueError, match="num_bins=0 must be >= 1"):
        reliability_bins([0.5], [1], num_bins=0)
    assert np.isnan(expected_calibration_error([], []))


def test_reliability_diagram_draws_the_bins_their_gaps_and_the_diagonal():
    rng = np.random.default_rng(1)
    confidences = rng.uniform(0.1, 1, 200)
    correct = rng.uniform(size=200) < confidences**2  # overconfident
    bins = reliability_bins(confidences, correct)
    ece = expected_calibration_error(confidences, correct)
    figure = reliability_diagram(bins, ece)
    ax, ax_count = figure.axes
    filled = bins[bins["count"] > 0]
    accuracy_bars, gap_bars = ax.containers
    assert [bar.get_height() for bar in accuracy_bars] == pytest.approx(filled["accuracy"].tolist())
    gaps = (filled["accuracy"] - filled["confidence"]).abs()
    assert [bar.get_height() for bar in gap_bars] == pytest.approx(gaps.tolist())
    (diagonal,) = [line for line in ax.get_lines() if line.get_label() == "perfect calibration"]
    assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]
    assert [bar.get_height() for bar in ax_count.containers[0]] == bins["count"].tolist()
    assert f"ECE {ece:.3f}" in ax.get_title()


def test_evaluate_tta_flip_param():
    assert parse_params({"evaluate": {"tta_flip": True}}).evaluate.tta_flip is True
    assert parse_params({}).evaluate.tta_flip is False
    with pytest.raises(ConfigError, match="evaluate.tta_flip='yes' is invalid: must be true or false"):
        parse_params({"evaluate": {"tta_flip": "yes"}})

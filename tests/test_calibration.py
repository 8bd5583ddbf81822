"""ECE and reliability table: zero for calibrated data, a worked example, logits vs probabilities."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from kdnb.evaluation.calibration import expected_calibration_error, reliability_table
from kdnb.report.plots import plot_reliability


def two_class_probs(conf):
    conf = np.asarray(conf, dtype=float)
    return np.stack([conf, 1 - conf], axis=1)  # class 0 is the top-1 prediction (conf >= 0.5)


def test_perfectly_calibrated_gives_zero():
    # 10 samples at confidence 0.6 (6 right) and 10 at 0.9 (9 right): accuracy == confidence per bin
    conf = [0.6] * 10 + [0.9] * 10
    labels = [0] * 6 + [1] * 4 + [0] * 9 + [1] * 1
    assert expected_calibration_error(two_class_probs(conf), labels) == pytest.approx(0.0, abs=1e-12)


def test_hand_computed_example():
    # 5 bins of width 0.2, right-closed. Samples (confidence, correct):
    #   bin (0.4, 0.6]: (0.55, 1), (0.5, 0)                      acc 0.50  conf 0.525  |gap| 0.025
    #   bin (0.6, 0.8]: (0.7, 1), (0.8, 0)                        acc 0.50  conf 0.750  |gap| 0.250
    #   bin (0.8, 1.0]: (0.9, 1), (0.95, 1), (1.0, 0), (0.85, 1)  acc 0.75  conf 0.925  |gap| 0.175
    # ECE = 2/8·0.025 + 2/8·0.25 + 4/8·0.175 = 0.00625 + 0.0625 + 0.0875 = 0.15625
    conf = [0.55, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 0.85]
    correct = [1, 0, 1, 0, 1, 1, 0, 1]
    labels = [0 if c else 1 for c in correct]  # the top-1 class is 0 (ties at 0.5 go to class 0)
    probs = two_class_probs(conf)
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.15625, abs=1e-12)
    table = reliability_table(probs, labels, n_bins=5)
    assert table["count"].tolist() == [0, 0, 2, 2, 4]
    assert table.loc[2, "confidence"] == pytest.approx(0.525) and table.loc[2, "accuracy"] == pytest.approx(0.5)
    assert table.loc[3, "confidence"] == pytest.approx(0.75) and table.loc[4, "accuracy"] == pytest.approx(0.75)
    assert np.isnan(table.loc[0, "accuracy"]) and np.isnan(table.loc[0, "confidence"])


def test_worked_example_value():
    # bin (0.4,0.6]: confidences 0.5, 0.6 (right, wrong)  acc 0.5  conf 0.55 → 0.05
    # bin (0.8,1.0]: confidences 0.9, 0.9, 0.9, 0.9 (3 right) acc 0.75 conf 0.9 → 0.15
    # ECE = 2/6·0.05 + 4/6·0.15 = 0.11666…
    probs = two_class_probs([0.5, 0.6, 0.9, 0.9, 0.9, 0.9])
    labels = [0, 1, 0, 0, 0, 1]
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(2 / 6 * 0.05 + 4 / 6 * 0.15)


def test_right_closed_bins():
    # confidence exactly 0.8 belongs to (0.6, 0.8], not (0.8, 1.0]
    table = reliability_table(two_class_probs([0.8]), [0], n_bins=5)
    assert table["count"].tolist() == [0, 0, 0, 1, 0]


def test_logits_and_probabilities_agree():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g) * 3
    labels = torch.randint(0, 10, (500,), generator=g)
    ece_logits = expected_calibration_error(logits, labels)
    assert ece_logits == pytest.approx(expected_calibration_error(logits.softmax(1), labels), abs=1e-9)
    assert ece_logits == pytest.approx(expected_calibration_error(logits, labels, from_logits=True), abs=1e-9)
    assert 0 < ece_logits < 1


def test_overconfident_model_has_large_ece():
    labels = np.array([0, 1] * 50)  # always predicting class 0 with confidence 0.99 → 50 % right
    assert expected_calibration_error(two_class_probs([0.99] * 100), labels) == pytest.approx(0.49)


def test_plot_reliability_runs():
    table = reliability_table(two_class_probs([0.6, 0.9, 0.95]), [0, 0, 1], n_bins=10)
    fig, ax = plt.subplots()
    assert plot_reliability(ax, table, "toy") is ax
    assert "ECE" in ax.get_title()
    plt.close(fig)

"""Our ROC / precision-recall curves and AUC (cianet.metrics.curves) against scikit-learn, bit for bit, and the
AUC against a Mann-Whitney double loop in float64."""

from __future__ import annotations

import numpy as np
import pytest

from cianet.metrics import auc_per_class, curve_area, precision_recall_points, roc_auc, roc_points
from helpers import pairwise_auc


def _cases(n_cases: int = 120):
    """Labels with both values and scores with and without ties (rounded, few levels, all equal)."""
    rng = np.random.default_rng(7)
    for t in range(n_cases):
        n = int(rng.integers(2, 50))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1  # both values present
        kind = t % 4
        if kind == 0:
            s = rng.normal(size=n)
        elif kind == 1:
            s = np.round(rng.normal(size=n), 1)
        elif kind == 2:
            s = rng.integers(0, 3, n).astype(np.float64)
        else:
            s = np.full(n, 0.25)
        yield y, s


@pytest.mark.slow  # imports scikit-learn, scipy and pandas (about a second per test process)
def test_curves_are_scikit_learns_to_the_bit():
    # lazy: scikit-learn is only the reference here; imported at collection it would cost every worker 2 s
    from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

    for y, s in _cases():
        fpr, tpr, thr = roc_points(y, s)
        ref = roc_curve(y, s)
        for ours, theirs in zip((fpr, tpr, thr), ref, strict=True):
            np.testing.assert_array_equal(ours, theirs)
        assert roc_auc(y, s) == roc_auc_score(y, s)
        assert curve_area(fpr, tpr) == auc(*ref[:2])
        for ours, theirs in zip(precision_recall_points(y, s), precision_recall_curve(y, s), strict=True):
            np.testing.assert_array_equal(ours, theirs)


def test_auc_is_the_mann_whitney_statistic():
    for y, s in _cases(60):
        assert roc_auc(y, s) == pytest.approx(pairwise_auc(s, y), abs=1e-12)
    # a perfect, a reversed and an all-tied ranking
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert roc_auc(y, np.zeros(4)) == 0.5
    assert auc_per_class(np.array([[0.1], [0.2], [0.3], [0.4]]), y[:, None], ["A"]) == {"A": 1.0, "Mean": 1.0}


def test_curve_corners_and_ends():
    y = np.array([1, 1, 1, 0, 0, 0])
    fpr, tpr, thr = roc_points(y, np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]))
    # (0, 0), the first threshold's point, then only the corners: (0, 1/3) -> (0, 1) -> (1, 1)
    np.testing.assert_array_equal(fpr, [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(tpr, [0.0, 1 / 3, 1.0, 1.0])
    np.testing.assert_array_equal(thr, [np.inf, 0.9, 0.7, 0.1])
    precision, recall, _ = precision_recall_points(y, np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]))
    assert recall[-1] == 0.0 and precision[-1] == 1.0 and recall[0] == 1.0 and precision[0] == 0.5


@pytest.mark.parametrize(
    "y, s, message",
    [
        ([1, 1], [0.1, 0.2], "both label values"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "0 or 1"),
        ([0, 1], [0.1, 0.2, 0.3], "2 labels for 3 scores"),
    ],
)
def test_bad_input_is_named(y, s, message):
    with pytest.raises(ValueError, match=message):
        roc_points(np.array(y), np.array(s))


def test_area_needs_a_monotone_x():
    assert curve_area(np.array([1.0, 0.5, 0.0]), np.array([1.0, 1.0, 1.0])) == 1.0
    with pytest.raises(ValueError, match="neither increasing nor decreasing"):
        curve_area(np.array([0.0, 1.0, 0.5]), np.array([1.0, 1.0, 1.0]))

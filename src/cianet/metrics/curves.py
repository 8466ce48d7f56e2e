"""ROC and precision-recall curves of one class, and the area under the ROC curve.

The conventions are scikit-learn's, reproduced to the last bit (tested against it): thresholds at the distinct
scores in decreasing order, ties stepping together (so a tie counts one half in the AUC, as Mann-Whitney);
the ROC curve starts at (0, 0) and keeps only its corners (collinear points dropped); the area is numpy's
trapezoid rule over those corners; the precision-recall curve ends at recall 0, precision 1. Our own code so
that an evaluating process does not import scikit-learn and scipy.stats (about 2 s on a 2-core CPU).
"""

from __future__ import annotations

import numpy as np

# numpy >= 2.0 names it trapezoid; 1.x only trapz (the same rule and the same sum)
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


def _steps(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fps, tps, thresholds)``: false and true positives counted at or above each distinct score, from the
    highest score down (float64 counts, as the curves divide them)."""
    order = np.argsort(s, kind="mergesort")[::-1]
    s_desc = s[order]
    hits = (y[order] == 1).astype(np.float64)
    # the last row of each run of equal scores: a tie is one step of the curve
    ends = np.r_[np.flatnonzero(np.diff(s_desc)), s_desc.size - 1]
    tps = np.cumsum(hits)[ends]
    fps = 1 + ends - tps
    return fps, tps, s_desc[ends]


def _check(y, s) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(y).ravel(), np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("a ROC curve needs both label values")
    return y, s


def roc_points(y, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of 0/1 labels ``y`` ``(N,)`` ranked by scores ``s`` ``(N,)``: the curve's
    corners from (0, 0) to (1, 1); the first threshold is +inf (nothing called positive)."""
    y, s = _check(y, s)
    fps, tps, thresholds = _steps(y, s)
    if fps.size > 2:  # keep a point only where the curve turns (and both ends)
        turns = np.logical_or(np.diff(fps, 2), np.diff(tps, 2))
        keep = np.flatnonzero(np.r_[True, turns, True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps, tps = np.r_[0, fps], np.r_[0, tps]
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds]


def curve_area(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid area under ``y(x)`` for ``x`` monotone (either direction; area counted positive)."""
    dx = np.diff(x)
    decreasing = bool(np.any(dx < 0))
    if decreasing and not np.all(dx <= 0):
        raise ValueError("x is neither increasing nor decreasing")
    area = _trapezoid(y, x)
    return float(-area if decreasing else area)


def roc_auc(y, s) -> float:
    """Area under the ROC curve (ties between a positive and a negative count one half)."""
    fpr, tpr, _ = roc_points(y, s)
    return curve_area(fpr, tpr)


def precision_recall_points(y, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)`` with recall decreasing to 0, where precision is 1 by convention;
    the thresholds are the distinct scores, increasing, one fewer than the points."""
    y, s = _check(y, s)
    fps, tps, thresholds = _steps(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    # reversed so recall decreases; the last point (recall 0, precision 1) has no threshold
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]

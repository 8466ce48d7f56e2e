"""Classification metrics: per-class ROC AUC of the image scores (:mod:`cianet.metrics.scores`), ROC curves,
and the Mann-Whitney AUC under row weights that the AUC bootstrap (:mod:`cianet.metrics.bootstrap`) resamples."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from cianet.labels import BOX_LABELS, LABELS
from cianet.metrics.arrays import to_numpy
from cianet.metrics.curves import roc_auc, roc_points


def _class_names(n_classes: int) -> tuple[str, ...]:
    return BOX_LABELS if n_classes <= len(BOX_LABELS) else LABELS[:n_classes]


def check_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(scores float64 (N, C), labels int64 0/1 (N, C))``; ValueError naming the problem."""
    s = to_numpy(scores).astype(np.float64)
    y = to_numpy(labels)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must both be (N, C)")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    return s, (y > 0.5).astype(np.int64)


def auc_per_class(scores: Any, labels: Any, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """ROC AUC per class and their "Mean".

    Args:
        scores: ``(N, C)`` image scores (e.g. from :func:`cianet.metrics.scores.image_scores_from_logits`).
        labels: ``(N, C)`` 0/1.
        class_names: defaults to LABELS (C = 14) or BOX_LABELS (C = 8).

    A class whose labels are all 0 or all 1 has no AUC: NaN, left out of the mean, with a warning naming it.
    """
    s, y = check_scores_labels(scores, labels)
    names = tuple(class_names) if class_names is not None else _class_names(s.shape[1])
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} class names for {s.shape[1]} score columns")
    out: dict[str, float] = {}
    undefined = []
    for k, name in enumerate(names):
        if y[:, k].min() == y[:, k].max():
            out[name] = float("nan")
            undefined.append(name)
        else:
            out[name] = roc_auc(y[:, k], s[:, k])
    if undefined:
        warnings.warn(
            f"AUC undefined (only one label value) for {', '.join(undefined)}; NaN, left out of the mean",
            stacklevel=2,
        )
    vals = [v for v in out.values() if not math.isnan(v)]
    out["Mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


def roc_curves(
    scores: Any, labels: Any, class_names: Sequence[str] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{class: (fpr, tpr)}`` for plotting; classes with a single label value are left out."""
    s, y = check_scores_labels(scores, labels)
    names = tuple(class_names) if class_names is not None else _class_names(s.shape[1])
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k, name in enumerate(names):
        if y[:, k].min() != y[:, k].max():
            fpr, tpr, _ = roc_points(y[:, k], s[:, k])
            curves[name] = (fpr, tpr)
    return curves


# ------------------------------------------------------------------------------ weighted AUC (the bootstrap's)
def auc_sorting(scores: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Per class, what the weighted AUC needs (weights aside): ``(pos, neg_sorted, below, upto)``.

    ``pos``: the positive rows; ``neg_sorted``: the negative rows by increasing score; ``below[i]`` /
    ``upto[i]``: how many of those negatives score ``<`` / ``<=`` the i-th positive.
    """
    out = []
    for k in range(scores.shape[1]):
        pos, neg = np.flatnonzero(y[:, k] > 0.5), np.flatnonzero(y[:, k] <= 0.5)
        neg_sorted = neg[np.argsort(scores[neg, k], kind="stable")]
        neg_scores = scores[neg_sorted, k]
        below = np.searchsorted(neg_scores, scores[pos, k], side="left")
        upto = np.searchsorted(neg_scores, scores[pos, k], side="right")
        out.append((pos, neg_sorted, below, upto))
    return out


def _weighted_auc_terms(
    w: np.ndarray, pos: np.ndarray, neg_sorted: np.ndarray, below: np.ndarray, upto: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mann-Whitney AUC terms of one class under row weights ``w`` ``(m, n)`` (bootstrap counts).

    Returns ``(numerator, n_pos, n_neg)``, each ``(m,)``: numerator ``sum_{pos i, neg j} w_i w_j ([s_i > s_j]
    + 0.5 [s_i == s_j])``; AUC = numerator / (n_pos n_neg). With integer weights all terms are exact.
    """
    m = w.shape[0]
    cum_neg = np.zeros((m, neg_sorted.size + 1))
    np.cumsum(w[:, neg_sorted], axis=1, out=cum_neg[:, 1:])  # negative weight of the j lowest negatives
    w_pos = w[:, pos]
    num = (w_pos * (cum_neg[:, below] + cum_neg[:, upto])).sum(axis=1) * 0.5
    return num, w_pos.sum(axis=1), cum_neg[:, -1]


def class_aucs(w: np.ndarray, sorting: Sequence[tuple]) -> np.ndarray:
    """``(C, m)`` AUC of each class under each row of weights ``w`` ``(m, n)``; NaN where a class has a
    single label value (zero positive or zero negative weight)."""
    out = np.full((len(sorting), w.shape[0]), np.nan)
    for k, terms in enumerate(sorting):
        num, n_pos, n_neg = _weighted_auc_terms(w, *terms)
        den = n_pos * n_neg
        np.divide(num, den, out=out[k], where=den > 0)
    return out


def mean_over_defined(aucs: np.ndarray) -> np.ndarray:
    """``(m,)`` mean over classes of a ``(C, m)`` AUC array, NaN entries left out (NaN if all are)."""
    defined = ~np.isnan(aucs)
    count = defined.sum(axis=0)
    total = np.where(defined, aucs, 0.0).sum(axis=0)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)

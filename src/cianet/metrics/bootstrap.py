"""Statistics: paired bootstrap confidence intervals of model A minus model B (over boxes or images, and over
seeds), one-model intervals, and the verdict sentences that follow from an interval."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cianet.metrics.arrays import to_numpy
from cianet.metrics.auc import auc_sorting, check_scores_labels, class_aucs, mean_over_defined
from cianet.metrics.boxes import class_mean

# Resampling scheme (deterministic given ``seed``), shared by every bootstrap below. With S runs (seeds):
#
# 1. ``choice = rng.integers(0, S, size=(n_boot, S))`` picks the runs of each replicate (with replacement);
#    with S == 1 nothing is drawn and every replicate uses the single run.
# 2. For each run s in order, the m_s slots of ``choice`` equal to s (in row-major order) each get an
#    independent within-run resample: box indices stratified by class (classes in ascending order, one
#    ``rng.random((m_s, n_c))`` per class) or image rows (one ``rng.random((m_s, n))``). A uniform u becomes
#    the index ``min(floor(u * n), n - 1)``. Draws of doubles do not depend on how they are split into calls,
#    so the row blocks used to bound memory do not change the result.
# 3. A replicate's statistic is the mean over its S slots.
#
# Intervals are percentile intervals of the replicate statistics.

_CHUNK_ELEMENTS = 1 << 21  # bootstrap work arrays are processed in row blocks of about this many elements


def _runs(x: Any, ndim: int, name: str) -> list[np.ndarray]:
    """One run (an ``ndim``-D array) or a list of per-seed runs -> list of ``ndim``-D numpy arrays."""
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise ValueError(f"{name} is empty")
        first = np.ndim(to_numpy(x[0]))
        if first == ndim:
            runs = [to_numpy(r) for r in x]
        elif first == ndim - 1:
            runs = [np.asarray([to_numpy(r) for r in x])]
        else:
            raise ValueError(f"{name} must be a {ndim}-D array or a list of them (one per seed)")
    else:
        arr = to_numpy(x)
        if arr.ndim == ndim:
            runs = [arr]
        elif arr.ndim == ndim + 1:
            runs = list(arr)
        else:
            raise ValueError(f"{name} must be a {ndim}-D array or a list of them, got shape {arr.shape}")
    for k, r in enumerate(runs):
        if r.ndim != ndim:
            raise ValueError(f"{name}[{k}] must be {ndim}-D, got shape {r.shape}")
    return runs


def _check_boot_args(n_boot: int, confidence: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _draw_indices(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """``(rows, n)`` int64 indices uniform in ``[0, n)``, from ``rng.random`` (see the scheme above)."""
    idx = (rng.random((rows, n)) * n).astype(np.int64)
    np.minimum(idx, n - 1, out=idx)
    return idx


def _row_blocks(m: int, n: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` blocks of ``m`` rows of ``n`` elements, about ``_CHUNK_ELEMENTS`` per block."""
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    return [(start, min(m, start + step)) for start in range(0, m, step)]


def _bootstrap_stats(samplers: Sequence[Any], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot,)`` replicate statistics: mean over resampled runs of ``sampler(m, rng) -> (m,)`` values."""
    s = len(samplers)
    if s > 1:
        choice = rng.integers(0, s, size=(n_boot, s))
    else:
        choice = np.zeros((n_boot, 1), dtype=np.int64)
    slots = np.empty(choice.shape, dtype=np.float64)
    for k, sampler in enumerate(samplers):
        mask = choice == k
        m = int(mask.sum())
        if m:
            slots[mask] = sampler(m, rng)  # row-major order of the slots
    return slots.mean(axis=1)


def _interval(stats: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """Percentile interval of the finite replicate statistics; ``(None, None)`` when there are none."""
    finite = stats[np.isfinite(stats)]
    if finite.size == 0:
        return None, None
    if finite.size < stats.size:
        warnings.warn(
            f"bootstrap: {stats.size - finite.size} of {stats.size} replicates undefined, left out",
            stacklevel=3,
        )
    low, high = np.quantile(finite, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------- localization
def _loc_run(ious: np.ndarray, classes: np.ndarray, threshold: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(hits float64 (n,), classes int64 (n,))`` of one run; a hit is ``IoU > threshold``."""
    iou = ious.astype(np.float64)
    if not np.issubdtype(classes.dtype, np.integer) and not np.all(classes == np.round(classes)):
        raise ValueError(f"{what}: class indices must be integers")
    cls = classes.astype(np.int64)
    if iou.shape != cls.shape:
        raise ValueError(f"{what}: {iou.size} IoUs for {cls.size} class indices")
    if iou.size == 0:
        raise ValueError(f"{what}: no boxes")
    if not np.all(np.isfinite(iou)):
        raise ValueError(f"{what}: IoUs contain NaN or inf")
    return (iou > threshold).astype(np.float64), cls


def _class_mean_sampler(values: np.ndarray, cls: np.ndarray):
    """Sampler of the class mean of ``values`` under class-stratified resampling of the boxes."""
    groups = [values[cls == c] for c in np.unique(cls)]

    def sample(m: int, rng: np.random.Generator) -> np.ndarray:
        total = np.zeros(m, dtype=np.float64)
        for v in groups:
            n = v.size
            for start, stop in _row_blocks(m, n):
                total[start:stop] += v[_draw_indices(rng, stop - start, n)].sum(axis=1) / n
        return total / len(groups)

    return sample


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    return t


def bootstrap_localization_difference(
    ious_a: Any,
    ious_b: Any,
    classes: Any,
    threshold: float = 0.5,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap of the class-mean localization accuracy of model A minus that of model B.

    Accuracy at ``threshold`` is, per class, the share of boxes with ``IoU > threshold`` (strictly); the
    class mean is over the classes that have boxes (in that run).

    Args:
        ious_a, ious_b: ``(n,)`` per-box IoUs of A and B, boxes in the same order; or lists of such arrays,
            one per seed (A and B of one seed share their boxes; different seeds may have different boxes).
        classes: ``(n,)`` integer class of each box, or a list of them, one per seed.
        threshold: T(IoU).
        n_boot: bootstrap replicates.
        seed: seed of ``numpy.random.default_rng``; the result is deterministic given it.
        confidence: level of the percentile interval.

    Resampling (see the scheme above): seeds with replacement when there are several, and within each chosen
    seed the boxes with replacement, stratified by class (each class keeps its box count).

    Returns:
        ``{"diff", "low", "high", "a", "b", "std_a", "std_b", "n_boxes", "n_seeds", "n_boot", "threshold",
        "confidence"}``: ``diff`` the mean over seeds of ``a_s - b_s``, ``low``/``high`` the interval, ``a``/
        ``b`` the mean accuracies over seeds, ``std_a``/``std_b`` their population std over seeds (0 with one
        seed), ``n_boxes`` the total number of boxes over seeds.
    """
    t = _check_threshold(threshold)
    result = _paired_class_means(
        ious_a,
        ious_b,
        classes,
        lambda v, c, what: _loc_run(v, c, t, what),
        ("ious_a", "ious_b"),
        n_boot,
        seed,
        confidence,
    )
    return {**result, "threshold": t}


def _paired_class_means(
    values_a: Any,
    values_b: Any,
    classes: Any,
    per_box,
    names: tuple[str, str],
    n_boot: int,
    seed: int,
    confidence: float,
) -> dict[str, Any]:
    """The paired class-stratified bootstrap of A - B shared by the localization and pointing differences;
    ``per_box(values, classes, what) -> (float64 values, int64 classes)`` validates one run."""
    _check_boot_args(n_boot, confidence)
    runs_a = _runs(values_a, 1, names[0])
    runs_b = _runs(values_b, 1, names[1])
    runs_c = _runs(classes, 1, "classes")
    if not len(runs_a) == len(runs_b) == len(runs_c):
        raise ValueError(
            f"seed counts differ: {names[0]} has {len(runs_a)}, {names[1]} {len(runs_b)}, classes {len(runs_c)}"
        )
    acc_a, acc_b, samplers, n_boxes = [], [], [], 0
    for s, (ia, ib, c) in enumerate(zip(runs_a, runs_b, runs_c)):
        if ia.shape != ib.shape:
            raise ValueError(f"seed {s}: A has {ia.size} boxes, B has {ib.size}")
        hits_a, cls = per_box(ia, c, f"seed {s} (A)")
        hits_b, _ = per_box(ib, c, f"seed {s} (B)")
        acc_a.append(class_mean(hits_a, cls))
        acc_b.append(class_mean(hits_b, cls))
        samplers.append(_class_mean_sampler(hits_a - hits_b, cls))
        n_boxes += cls.size
    stats = _bootstrap_stats(samplers, int(n_boot), np.random.default_rng(seed))
    return _difference_result(
        acc_a, acc_b, _interval(stats, confidence), n_boot, confidence, n_boxes=n_boxes, n_seeds=len(runs_a)
    )


def _value_run(values: np.ndarray, classes: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(values float64 (n,), classes int64 (n,))`` of one run of per-box values (e.g. hits)."""
    v = values.astype(np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{what}: values contain NaN or inf")
    _, cls = _loc_run(np.zeros(v.shape), classes, 0.0, what)  # its checks of the classes and counts
    return v, cls


def bootstrap_class_mean_difference(
    values_a: Any,
    values_b: Any,
    classes: Any,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    metric: str = "pointing game accuracy",
) -> dict[str, Any]:
    """:func:`bootstrap_localization_difference` of per-box values instead of IoUs: the class mean of
    ``values`` (e.g. pointing-game hits, :func:`~cianet.metrics.boxes.pointing_hit`) of A minus B, with the
    same resampling, so that 0/1 hits ``IoU > t`` give exactly that function's result. ``metric`` names the
    measure in the result (for :func:`verdict`). Returns its keys without ``threshold``, plus ``metric``."""
    result = _paired_class_means(
        values_a, values_b, classes, _value_run, ("values_a", "values_b"), n_boot, seed, confidence
    )
    return {**result, "metric": metric}


def _difference_result(
    values_a: list[float], values_b: list[float], interval: tuple, n_boot: int, confidence: float, **counts: Any
) -> dict[str, Any]:
    """The result dict of a paired bootstrap difference (point values are means over seeds)."""
    return {
        "diff": float(np.mean([a - b for a, b in zip(values_a, values_b)])),
        "low": interval[0],
        "high": interval[1],
        "a": float(np.mean(values_a)),
        "b": float(np.mean(values_b)),
        "std_a": float(np.std(values_a)),
        "std_b": float(np.std(values_b)),
        **counts,
        "n_boot": int(n_boot),
        "confidence": float(confidence),
    }


def localization_ci(
    ious: Any,
    classes: Any,
    threshold: float = 0.5,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float | None]:
    """Class-mean localization accuracy of one model at ``threshold`` with its bootstrap interval.

    Args:
        ious: ``(n,)`` per-box IoUs (or a list of them, one per seed: the value is then the mean over seeds).
        classes: ``(n,)`` integer class of each box (or a list, as ``ious``).
        threshold, n_boot, seed, confidence: as :func:`bootstrap_localization_difference` (same resampling).

    Returns:
        ``{"value", "low", "high"}``.
    """
    t = _check_threshold(threshold)
    return _class_mean_ci(ious, classes, lambda v, c, what: _loc_run(v, c, t, what), "ious", n_boot, seed, confidence)


def class_mean_ci(
    values: Any, classes: Any, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float | None]:
    """:func:`localization_ci` of per-box values (e.g. pointing-game hits) instead of IoUs: their class mean
    with its bootstrap interval (the same resampling). Returns ``{"value", "low", "high"}``."""
    return _class_mean_ci(values, classes, _value_run, "values", n_boot, seed, confidence)


def _class_mean_ci(
    values: Any, classes: Any, per_box, name: str, n_boot: int, seed: int, confidence: float
) -> dict[str, float | None]:
    _check_boot_args(n_boot, confidence)
    runs_i, runs_c = _runs(values, 1, name), _runs(classes, 1, "classes")
    if len(runs_i) != len(runs_c):
        raise ValueError(f"seed counts differ: {name} has {len(runs_i)}, classes {len(runs_c)}")
    points, samplers = [], []
    for s, (i, c) in enumerate(zip(runs_i, runs_c)):
        hits, cls = per_box(i, c, f"seed {s}")
        points.append(class_mean(hits, cls))
        samplers.append(_class_mean_sampler(hits, cls))
    low, high = _interval(_bootstrap_stats(samplers, int(n_boot), np.random.default_rng(seed)), confidence)
    return {"value": float(np.mean(points)), "low": low, "high": high}


# ---------------------------------------------------------------------------------------------- AUC
def _auc_runs(scores_list: Sequence[Any], labels: Any, names: Sequence[str]) -> list[tuple]:
    """Validated per-seed ``(y float64 (n, C), [scores (n, C) per model])``."""
    per_model = [_runs(s, 2, name) for s, name in zip(scores_list, names)]
    runs_y = _runs(labels, 2, "labels")
    counts = [len(r) for r in per_model] + [len(runs_y)]
    if len(set(counts)) != 1:
        detail = ", ".join(f"{n} {c}" for n, c in zip([*names, "labels"], counts))
        raise ValueError(f"seed counts differ: {detail}")
    out = []
    for s in range(len(runs_y)):
        checked = []
        for name, runs in zip(names, per_model):
            if runs[s].shape != runs_y[s].shape:
                raise ValueError(f"seed {s}: {name} {runs[s].shape} and labels {runs_y[s].shape} differ in shape")
            sc, y = check_scores_labels(runs[s], runs_y[s])
            checked.append(sc)
        if y.shape[0] == 0:
            raise ValueError(f"seed {s}: no images")
        out.append((y.astype(np.float64), checked))
    return out


def _mean_auc_sampler(n: int, sortings: Sequence[Sequence[tuple]], weights: np.ndarray):
    """Sampler of ``weights @ (mean AUC of each model)`` (e.g. ``[1, -1]``: A - B) under resampling of the
    ``n`` image rows; NaN for a replicate in which no class has both label values."""

    def sample(m: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty(m, dtype=np.float64)
        for start, stop in _row_blocks(m, n):
            rows = stop - start
            idx = _draw_indices(rng, rows, n)
            flat = (np.arange(rows)[:, None] * n + idx).ravel()
            w = np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)
            means = np.stack([mean_over_defined(class_aucs(w, sorting)) for sorting in sortings])
            out[start:stop] = weights @ means
        return out

    return sample


def _point_auc(n: int, sorting: Sequence[tuple], seed_index: int) -> float:
    """Mean over the classes with both label values of the AUCs of one model on one run."""
    aucs = class_aucs(np.ones((1, n)), sorting)[:, 0]
    defined = aucs[~np.isnan(aucs)]
    if defined.size == 0:
        raise ValueError(f"seed {seed_index}: no class has both label values, the mean AUC is undefined")
    return float(np.mean(defined))


def bootstrap_auc_difference(
    scores_a: Any,
    scores_b: Any,
    labels: Any,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap of the mean AUC over classes of model A minus that of model B.

    Args:
        scores_a, scores_b: ``(n, C)`` image scores of A and B on the same images; or lists of such arrays,
            one per seed (paired seed by seed).
        labels: ``(n, C)`` 0/1 labels (or a list, one per seed).
        n_boot, seed, confidence: as :func:`bootstrap_localization_difference`.

    Resampling: seeds with replacement when there are several; within each chosen seed the image rows with
    replacement (shared by A and B). A class whose labels take a single value in a replicate is left out of
    that replicate's mean (for both models); a replicate with no such class is left out with a warning.
    The point AUCs are the Mann-Whitney statistics (ties count 1/2), equal to :func:`auc_per_class`'s.

    Returns:
        ``{"diff", "low", "high", "a", "b", "std_a", "std_b", "n_images", "n_seeds", "n_boot",
        "confidence"}``, as :func:`bootstrap_localization_difference` with ``n_images`` the total over seeds.
    """
    _check_boot_args(n_boot, confidence)
    runs = _auc_runs([scores_a, scores_b], labels, ["scores_a", "scores_b"])
    auc_a, auc_b, samplers, n_images = [], [], [], 0
    for s, (y, (sa, sb)) in enumerate(runs):
        sortings = [auc_sorting(sa, y), auc_sorting(sb, y)]
        auc_a.append(_point_auc(y.shape[0], sortings[0], s))
        auc_b.append(_point_auc(y.shape[0], sortings[1], s))
        samplers.append(_mean_auc_sampler(y.shape[0], sortings, np.array([1.0, -1.0])))
        n_images += y.shape[0]
    interval = _interval(_bootstrap_stats(samplers, int(n_boot), np.random.default_rng(seed)), confidence)
    return _difference_result(auc_a, auc_b, interval, n_boot, confidence, n_images=n_images, n_seeds=len(runs))


def auc_ci(
    scores: Any, labels: Any, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float | None]:
    """Mean AUC over classes of one model with its bootstrap interval (image rows resampled).

    Args:
        scores: ``(n, C)`` image scores (or a list, one per seed: the value is then the mean over seeds).
        labels: ``(n, C)`` 0/1 (or a list, as ``scores``).

    Returns:
        ``{"value", "low", "high"}``.
    """
    _check_boot_args(n_boot, confidence)
    values, samplers = [], []
    for s, (y, (sc,)) in enumerate(_auc_runs([scores], labels, ["scores"])):
        sortings = [auc_sorting(sc, y)]
        values.append(_point_auc(y.shape[0], sortings[0], s))
        samplers.append(_mean_auc_sampler(y.shape[0], sortings, np.array([1.0])))
    low, high = _interval(_bootstrap_stats(samplers, int(n_boot), np.random.default_rng(seed)), confidence)
    return {"value": float(np.mean(values)), "low": low, "high": high}


# ---------------------------------------------------------------------------------------------- verdicts
def verdict(
    diff_result: Mapping[str, Any], what: str = "CIA-Net", other: str = "Base", metric: str | None = None
) -> str:
    """One sentence whose claim follows from the interval of a ``bootstrap_*_difference`` result.

    "beats" only if ``low > 0``, "loses to" only if ``high < 0``, otherwise "no significant difference"
    (also when the interval is undefined). ``metric`` defaults to "mean localization accuracy at T(IoU) = t"
    for a localization result and "mean AUC" for an AUC result.
    """
    for key in ("diff", "low", "high"):
        if key not in diff_result:
            raise ValueError(f"diff_result has no {key!r} (expected a bootstrap_*_difference result)")
    if metric is None:
        if diff_result.get("metric"):
            metric = str(diff_result["metric"])
        elif diff_result.get("threshold") is not None:
            metric = f"mean localization accuracy at T(IoU) = {float(diff_result['threshold']):g}"
        else:
            metric = "mean AUC"
    diff, low, high = diff_result["diff"], diff_result["low"], diff_result["high"]
    level = f"{100 * float(diff_result.get('confidence', 0.95)):g}%"
    details = [f"{diff_result['n_seeds']} seed(s)"] if "n_seeds" in diff_result else []
    if "n_boot" in diff_result:
        details.append(f"{diff_result['n_boot']} bootstrap replicates")
    extra = f"; {', '.join(details)}" if details else ""
    if low is None or high is None:
        return (
            f"No significant difference between {what} and {other} on {metric}: difference {diff:+.3f}, "
            f"{level} CI undefined{extra}."
        )
    ci = f"difference {diff:+.3f}, {level} CI [{low:+.3f}, {high:+.3f}]{extra}"
    if low > 0:
        return f"{what} beats {other} on {metric}: {ci}."
    if high < 0:
        return f"{what} loses to {other} on {metric}: {ci}."
    return f"No significant difference between {what} and {other} on {metric} (the interval contains 0): {ci}."

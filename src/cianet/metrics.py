"""The paper's evaluation metrics (section 4.1, following Li et al., CVPR 2018).

Localization (8 box classes): for every ground-truth box, the predicted region is the union of that class's
grid cells with ``p > 0.5``; the box is found when ``IoU(region, box) > T(IoU)`` (strictly), an empty region
is a miss. Accuracy of a class is ``found / boxes``; "Mean" is the mean over the classes that have boxes.
IoUs are exact: cells and box are rectangles in the image frame, the cells are disjoint, so
``intersection = sum over positive cells of overlap(cell, box)`` and
``union = area(box) + area(positive cells) - intersection``.

Classification: per-class ROC AUC of the image score ``1 - prod_j (1 - p_j)`` (eq. 5's image probability).

Statistics: paired bootstrap confidence intervals of CIA-Net minus Base (over boxes or images, and over seeds),
one-model intervals, verdict sentences that follow from an interval, and the attention mechanism metric.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from cianet.labels import BOX_LABELS, LABELS

__all__ = [
    "DEFAULT_THRESHOLDS",
    "image_scores_from_logits",
    "image_evidence_from_logits",
    "format_probability",
    "region_box_iou",
    "box_ious",
    "mask_iou",
    "accuracy_from_ious",
    "localization_accuracy",
    "auc_per_class",
    "roc_curves",
    "mean_std_results",
    "format_localization_table",
    "format_auc_table",
    "bootstrap_localization_difference",
    "bootstrap_auc_difference",
    "localization_ci",
    "auc_ci",
    "verdict",
    "attention_in_boxes",
    "PROB_THRESHOLD_GRID",
    "pointing_hit",
    "class_mean_accuracy",
    "choose_prob_threshold",
    "bootstrap_class_mean_difference",
    "class_mean_ci",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)

Box = Sequence[float]  # (image_index, class_index, x, y, w, h)


def _to_numpy(a: Any) -> np.ndarray:
    """numpy view of a numpy array or a (possibly GPU / grad-requiring) torch tensor."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


# ----------------------------------------------------------------------------------------------------------
# Image scores
# ----------------------------------------------------------------------------------------------------------


def image_scores_from_logits(logits: Any, rescale: bool = False) -> Any:
    """Image-level probability ``1 - prod_j (1 - p_j)`` per (image, class).

    Args:
        logits: ``(N, C, H, W)`` torch tensor or numpy array of cell logits.
        rescale: apply Li et al.'s ``1 - p -> 0.98 + 0.02 (1 - p)`` (match the training loss's setting).

    Returns:
        ``(N, C)``, same kind (torch / numpy) as the input. Computed as ``-expm1(-sum_j a_j)`` with
        ``a_j = -log(1 - p_j)`` (softplus), so scores near 0 keep their relative precision (AUC ranks them).
    """
    import torch

    from cianet.losses import log_prob_none

    is_numpy = not isinstance(logits, torch.Tensor)
    z = torch.as_tensor(np.asarray(logits)) if is_numpy else logits
    if z.dim() != 4:
        raise ValueError(f"logits must be (N, C, H, W), got shape {tuple(z.shape)}")
    if not z.is_floating_point() or z.dtype in (torch.float16, torch.bfloat16):
        z = z.to(torch.float32)  # half precision (e.g. autocast outputs) loses small scores
    scores = -torch.expm1(log_prob_none(z, rescale=rescale))  # (N, C)
    return scores.numpy() if is_numpy else scores


def image_evidence_from_logits(logits: Any, rescale: bool = False) -> np.ndarray:
    """The image's MIL evidence ``A = sum_j -log(1 - p_j)`` per (image, class), float64 numpy ``(N, C)``.

    The image score is ``1 - exp(-A)``, so A ranks images as the score does, but it does not saturate: in
    float32 the score is exactly 1.0 from ``A ~ 17`` on (a cell logit of ~17 suffices), where A still
    differs. With ``rescale`` (``loss.mil_rescale``) A is ``-log`` of the rescaled probability of no finding,
    the quantity the MIL loss trained. Computed in float64 from the logits; AUCs rank by it.
    """
    import torch

    from cianet.losses import log_prob_none

    z = logits.detach().cpu() if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    if z.dim() != 4:
        raise ValueError(f"logits must be (N, C, H, W), got shape {tuple(z.shape)}")
    z = z.to(torch.float64)
    if rescale:  # each cell's term is bounded (<= -log 0.98): the loss's own form is exact
        return (-log_prob_none(z, rescale=True)).numpy()
    # softplus without torch's linear cut-off above z = 20, which drops log1p(e^-z) (~1e-9 a cell)
    cells = z.clamp(min=0) + torch.log1p(torch.exp(-z.abs()))
    return cells.flatten(2).sum(-1).numpy()


def format_probability(p: float | None, digits: int = 4) -> str:
    """A probability for people to read: ``digits`` decimals, ``"> 0.9999"`` / ``"< 0.0001"`` where those
    would round to 1 or 0 (a saturated score is not certainty), ``"0"`` for exactly 0, ``"n/a"`` for
    None/NaN. Every display of an image probability (viewer, overlays, reports) uses it."""
    if p is None or not math.isfinite(float(p)):
        return "n/a"
    p = float(p)
    text = f"{p:.{digits}f}"
    if float(text) >= 1.0:
        return f"> 0.{'9' * digits}"
    if p > 0 and float(text) == 0.0:
        return f"< 0.{'0' * (digits - 1)}1"
    return "0" if p <= 0 else text


# ----------------------------------------------------------------------------------------------------------
# Localization
# ----------------------------------------------------------------------------------------------------------


def _check_box(box: Sequence[float], what: str) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: box must be (x, y, w, h), got {box!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
        raise ValueError(f"{what}: box must have finite coordinates and non-negative size, got {box!r}")
    return x, y, w, h


def region_box_iou(
    region: np.ndarray, box_xywh: Sequence[float], cell_w: float = 1.0, cell_h: float = 1.0
) -> float:
    """Exact IoU between a box and the union of the True cells of ``region``.

    Args:
        region: bool ``(h, w)``; cell ``(i, j)`` is the rectangle ``[j cw, (j+1) cw) x [i ch, (i+1) ch)``.
        box_xywh: ``(x, y, w, h)`` in the same frame.
        cell_w, cell_h: cell size in that frame (1 for a pixel mask).

    Returns:
        IoU in [0, 1]; 0 for an empty region (a miss). The part of the box outside the region's extent
        (the image) is ignored; NIH boxes lie inside their images.
    """
    x, y, w, h = _check_box(box_xywh, "region_box_iou")
    region = np.asarray(region, dtype=bool)
    if region.ndim != 2:
        raise ValueError(f"region must be 2-D (h, w), got shape {region.shape}")
    gh, gw = region.shape
    n_pos = int(region.sum())
    if n_pos == 0:
        return 0.0
    # The part of a box outside the image (the region's extent) is ignored, as in box_to_grid.
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, gw * cell_w), min(y + h, gh * cell_h)
    x, y, w, h = x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0)
    # 1-D overlaps of the box with every cell column / row; a cell's overlap area is their product.
    left = np.arange(gw, dtype=np.float64) * cell_w
    top = np.arange(gh, dtype=np.float64) * cell_h
    ox = np.clip(np.minimum(left + cell_w, x + w) - np.maximum(left, x), 0.0, None)  # (gw,)
    oy = np.clip(np.minimum(top + cell_h, y + h) - np.maximum(top, y), 0.0, None)  # (gh,)
    inter = float(oy @ region.astype(np.float64) @ ox)
    union = w * h + n_pos * cell_w * cell_h - inter
    return inter / union if union > 0 else 0.0


def box_ious(
    probs: Any,
    boxes: Sequence[Box],
    image_size: Sequence[float],
    prob_threshold: float = 0.5,
) -> np.ndarray:
    """IoU of every ground-truth box with its class's predicted region (cells with ``p > prob_threshold``).

    Args:
        probs: ``(N, C, H, W)`` cell probabilities (numpy or torch); the grid covers the whole image.
            C is 8 (the box classes) or 14 (the box classes are its first 8 channels).
        boxes: ``(image_index, class_index, x, y, w, h)`` with ``class_index`` into BOX_LABELS and the box in
            the frame of the image the grid covers, of size ``image_size``.
        image_size: ``(W, H)``.

    Returns:
        float64 ``(n_boxes,)``.
    """
    p = _to_numpy(probs)
    if p.ndim != 4:
        raise ValueError(f"probs must be (N, C, H, W), got shape {p.shape}")
    width, height = (float(v) for v in image_size)
    if not (width > 0 and height > 0):
        raise ValueError(f"image_size must be a positive (W, H), got {image_size!r}")
    n, c, gh, gw = p.shape
    positive = p > prob_threshold  # (N, C, H, W) bool
    out = np.empty(len(boxes), dtype=np.float64)
    for k, entry in enumerate(boxes):
        if len(entry) != 6:
            raise ValueError(f"box {k}: expected (image_index, class_index, x, y, w, h), got {entry!r}")
        img, cls = int(entry[0]), int(entry[1])
        if not 0 <= img < n:
            raise ValueError(f"box {k}: image index {img} outside [0, {n})")
        if not 0 <= cls < c:
            raise ValueError(f"box {k}: class index {cls} outside [0, {c})")
        out[k] = region_box_iou(positive[img, cls], entry[2:], width / gw, height / gh)
    return out


def mask_iou(mask: Any, box_xywh: Sequence[float]) -> float:
    """Pixel-exact IoU of a bool ``(H, W)`` mask (pixel ``(r, c)`` = square ``[c, c+1) x [r, r+1)``) and a box.

    Used when the prediction has been mapped back into the original image frame as a pixel mask.
    """
    return region_box_iou(_to_numpy(mask).astype(bool), box_xywh, 1.0, 1.0)


def _class_names(n_classes: int) -> tuple[str, ...]:
    return BOX_LABELS if n_classes <= len(BOX_LABELS) else LABELS[:n_classes]


def accuracy_from_ious(
    ious: Sequence[float],
    class_indices: Sequence[int],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    class_names: Sequence[str] = BOX_LABELS,
) -> dict[str, dict[str, float]]:
    """Localization accuracy from per-box IoUs: ``{f"{t:g}": {class: found/boxes, ..., "Mean": m}}``.

    A box is found when ``IoU > t`` (strictly). Classes without any box get NaN and are left out of "Mean"
    (with a warning).
    """
    ious = np.asarray(ious, dtype=np.float64)
    cls = np.asarray(class_indices, dtype=np.int64)
    if ious.shape != cls.shape:
        raise ValueError(f"{ious.size} IoUs for {cls.size} class indices")
    counts = np.bincount(cls, minlength=len(class_names))[: len(class_names)] if cls.size else np.zeros(
        len(class_names), dtype=np.int64
    )
    missing = [class_names[k] for k in range(len(class_names)) if counts[k] == 0]
    if missing:
        warnings.warn(
            f"localization accuracy: no ground-truth box for {', '.join(missing)}; "
            "reported as NaN and left out of the mean",
            stacklevel=3,
        )
    results: dict[str, dict[str, float]] = {}
    for t in thresholds:
        row: dict[str, float] = {}
        for k, name in enumerate(class_names):
            sel = cls == k
            row[name] = float(np.mean(ious[sel] > t)) if counts[k] else float("nan")
        vals = [v for v in row.values() if not math.isnan(v)]
        row["Mean"] = float(np.mean(vals)) if vals else float("nan")
        results[f"{t:g}"] = row
    return results


def localization_accuracy(
    probs: Any,
    boxes: Sequence[Box],
    image_size: Sequence[float],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    prob_threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """The paper's localization accuracy of the 8 box classes at each T(IoU).

    Args:
        probs: ``(N, 8, H, W)`` (or ``(N, 14, H, W)``) cell probabilities, on any grid (e.g. 128x128 at test).
        boxes: ``(image_index, class_index, x, y, w, h)``, boxes in the image frame of size ``image_size``.
        image_size: ``(W, H)``.
        thresholds: the T(IoU) values; keys of the result are ``f"{t:g}"`` ("0.1", ...).

    Returns:
        ``{"0.1": {"Atelectasis": acc, ..., "Pneumothorax": acc, "Mean": m}, ...}``.
    """
    ious = box_ious(probs, boxes, image_size, prob_threshold)
    classes = [int(b[1]) for b in boxes]
    if any(c >= len(BOX_LABELS) for c in classes):
        raise ValueError(f"box class indices must be < {len(BOX_LABELS)} (the box classes)")
    return accuracy_from_ious(ious, classes, thresholds, BOX_LABELS)


# ----------------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------------


def _check_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _to_numpy(scores).astype(np.float64)
    y = _to_numpy(labels)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must both be (N, C)")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    return s, (y > 0.5).astype(np.int64)


def auc_per_class(
    scores: Any, labels: Any, class_names: Sequence[str] | None = None
) -> dict[str, float]:
    """ROC AUC per class and their "Mean".

    Args:
        scores: ``(N, C)`` image scores (e.g. from :func:`image_scores_from_logits`).
        labels: ``(N, C)`` 0/1.
        class_names: defaults to LABELS (C = 14) or BOX_LABELS (C = 8).

    A class whose labels are all 0 or all 1 has no AUC: NaN, left out of the mean, with a warning naming it.
    """
    from sklearn.metrics import roc_auc_score

    s, y = _check_scores_labels(scores, labels)
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
            out[name] = float(roc_auc_score(y[:, k], s[:, k]))
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
    from sklearn.metrics import roc_curve

    s, y = _check_scores_labels(scores, labels)
    names = tuple(class_names) if class_names is not None else _class_names(s.shape[1])
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k, name in enumerate(names):
        if y[:, k].min() != y[:, k].max():
            fpr, tpr, _ = roc_curve(y[:, k], s[:, k])
            curves[name] = (fpr, tpr)
    return curves


# ----------------------------------------------------------------------------------------------------------
# Aggregation and tables
# ----------------------------------------------------------------------------------------------------------


def mean_std_results(results: Sequence[Mapping[str, Any]]) -> tuple[dict, dict]:
    """Element-wise mean and (population) std over several result dicts of the same layout (e.g. 5 folds).

    Works for :func:`localization_accuracy` (nested) and :func:`auc_per_class` (flat) results; NaN entries are
    ignored (a value NaN in every fold stays NaN).
    """
    if not results:
        raise ValueError("no results to aggregate")

    def agg(items: Sequence[Any]) -> tuple[Any, Any]:
        if isinstance(items[0], Mapping):
            keys = list(items[0].keys())
            pairs = {k: agg([it[k] for it in items]) for k in keys}
            return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}
        arr = np.asarray(items, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            return float("nan"), float("nan")
        return float(arr.mean()), float(arr.std())

    return agg(list(results))


def _cell(value: float, std: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std:.{digits}f}"
    return text


def format_localization_table(
    results_by_model: Mapping[str, Mapping[str, Mapping[str, float]]],
    thresholds: Sequence[float | str] | None = None,
    std_by_model: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    digits: int = 2,
    class_names: Sequence[str] | None = None,
) -> str:
    """Markdown table in the paper's layout: rows T(IoU) x model, columns the box classes and "Mean".

    Args:
        results_by_model: ``{model: localization_accuracy(...) result}``.
        thresholds: which T(IoU) rows (floats or their ``f"{t:g}"`` keys); default all in the first model.
        std_by_model: optional ``{model: std result}`` (e.g. from :func:`mean_std_results`) -> "m ± s" cells.
        class_names: the columns; default the classes of the first model's results (NIH: the 8 box classes).
    """
    if not results_by_model:
        raise ValueError("no results to format")
    first = next(iter(results_by_model.values()))
    if class_names is None:
        row = next(iter(first.values()), {})
        class_names = [c for c in row if c != "Mean"] or list(BOX_LABELS)
    keys = [t if isinstance(t, str) else f"{t:g}" for t in thresholds] if thresholds else list(first.keys())
    header = ["T(IoU)", "Model", *class_names, "Mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in keys:
        for i, (model, res) in enumerate(results_by_model.items()):
            if key not in res:
                raise ValueError(f"model {model!r} has no result at T(IoU) = {key}")
            std_row = (std_by_model or {}).get(model, {}).get(key, {})
            cells = [_cell(res[key].get(c, float("nan")), std_row.get(c), digits) for c in (*class_names, "Mean")]
            lines.append("| " + " | ".join([key if i == 0 else "", model, *cells]) + " |")
    return "\n".join(lines) + "\n"


def format_auc_table(
    results_by_model: Mapping[str, Mapping[str, float]],
    std_by_model: Mapping[str, Mapping[str, float]] | None = None,
    class_names: Sequence[str] | None = None,
    digits: int = 2,
) -> str:
    """Markdown table of AUCs: one row per model, columns the classes (default: those of the first model's
    result; NIH: the 14) and "Mean" (as Table 4)."""
    if not results_by_model:
        raise ValueError("no results to format")
    if class_names is None:
        class_names = [c for c in next(iter(results_by_model.values())) if c != "Mean"] or list(LABELS)
    header = ["Model", *class_names, "Mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, res in results_by_model.items():
        std = (std_by_model or {}).get(model, {})
        cells = [_cell(res.get(c, float("nan")), std.get(c), digits) for c in (*class_names, "Mean")]
        lines.append("| " + " | ".join([model, *cells]) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# Statistics: bootstrap confidence intervals, verdicts, the attention mechanism metric
# ----------------------------------------------------------------------------------------------------------
#
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
        first = np.ndim(_to_numpy(x[0]))
        if first == ndim:
            runs = [_to_numpy(r) for r in x]
        elif first == ndim - 1:
            runs = [np.asarray([_to_numpy(r) for r in x])]
        else:
            raise ValueError(f"{name} must be a {ndim}-D array or a list of them (one per seed)")
    else:
        arr = _to_numpy(x)
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


def _class_mean(values: np.ndarray, cls: np.ndarray) -> float:
    """Mean over the classes present of the mean of ``values`` in each class."""
    return float(np.mean([np.mean(values[cls == c]) for c in np.unique(cls)]))


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
    result = _paired_class_means(ious_a, ious_b, classes, lambda v, c, what: _loc_run(v, c, t, what),
                                 ("ious_a", "ious_b"), n_boot, seed, confidence)
    return {**result, "threshold": t}


def _paired_class_means(values_a: Any, values_b: Any, classes: Any, per_box, names: tuple[str, str],
                        n_boot: int, seed: int, confidence: float) -> dict[str, Any]:
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
        acc_a.append(_class_mean(hits_a, cls))
        acc_b.append(_class_mean(hits_b, cls))
        samplers.append(_class_mean_sampler(hits_a - hits_b, cls))
        n_boxes += cls.size
    stats = _bootstrap_stats(samplers, int(n_boot), np.random.default_rng(seed))
    return _difference_result(acc_a, acc_b, _interval(stats, confidence), n_boot, confidence,
                              n_boxes=n_boxes, n_seeds=len(runs_a))


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
    ``values`` (e.g. pointing-game hits, :func:`pointing_hit`) of A minus B, with the same resampling, so
    that 0/1 hits ``IoU > t`` give exactly that function's result. ``metric`` names the measure in the
    result (for :func:`verdict`). Returns its keys without ``threshold``, plus ``metric``."""
    result = _paired_class_means(values_a, values_b, classes, _value_run, ("values_a", "values_b"),
                                 n_boot, seed, confidence)
    return {**result, "metric": metric}


def _difference_result(values_a: list[float], values_b: list[float], interval: tuple, n_boot: int,
                       confidence: float, **counts: Any) -> dict[str, Any]:
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
    return _class_mean_ci(ious, classes, lambda v, c, what: _loc_run(v, c, t, what), "ious", n_boot, seed,
                          confidence)


def class_mean_ci(values: Any, classes: Any, n_boot: int = 2000, seed: int = 0,
                  confidence: float = 0.95) -> dict[str, float | None]:
    """:func:`localization_ci` of per-box values (e.g. pointing-game hits) instead of IoUs: their class mean
    with its bootstrap interval (the same resampling). Returns ``{"value", "low", "high"}``."""
    return _class_mean_ci(values, classes, _value_run, "values", n_boot, seed, confidence)


def _class_mean_ci(values: Any, classes: Any, per_box, name: str, n_boot: int, seed: int,
                   confidence: float) -> dict[str, float | None]:
    _check_boot_args(n_boot, confidence)
    runs_i, runs_c = _runs(values, 1, name), _runs(classes, 1, "classes")
    if len(runs_i) != len(runs_c):
        raise ValueError(f"seed counts differ: {name} has {len(runs_i)}, classes {len(runs_c)}")
    points, samplers = [], []
    for s, (i, c) in enumerate(zip(runs_i, runs_c)):
        hits, cls = per_box(i, c, f"seed {s}")
        points.append(_class_mean(hits, cls))
        samplers.append(_class_mean_sampler(hits, cls))
    low, high = _interval(_bootstrap_stats(samplers, int(n_boot), np.random.default_rng(seed)), confidence)
    return {"value": float(np.mean(points)), "low": low, "high": high}


# ---------------------------------------------------------------------------------------------- AUC
def _auc_sorting(scores: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, ...]]:
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


def _class_aucs(w: np.ndarray, sorting: Sequence[tuple]) -> np.ndarray:
    """``(C, m)`` AUC of each class under each row of weights ``w`` ``(m, n)``; NaN where a class has a
    single label value (zero positive or zero negative weight)."""
    out = np.full((len(sorting), w.shape[0]), np.nan)
    for k, terms in enumerate(sorting):
        num, n_pos, n_neg = _weighted_auc_terms(w, *terms)
        den = n_pos * n_neg
        np.divide(num, den, out=out[k], where=den > 0)
    return out


def _mean_over_defined(aucs: np.ndarray) -> np.ndarray:
    """``(m,)`` mean over classes of a ``(C, m)`` AUC array, NaN entries left out (NaN if all are)."""
    defined = ~np.isnan(aucs)
    count = defined.sum(axis=0)
    total = np.where(defined, aucs, 0.0).sum(axis=0)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


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
            sc, y = _check_scores_labels(runs[s], runs_y[s])
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
            means = np.stack([_mean_over_defined(_class_aucs(w, sorting)) for sorting in sortings])
            out[start:stop] = weights @ means
        return out

    return sample


def _point_auc(n: int, sorting: Sequence[tuple], seed_index: int) -> float:
    """Mean over the classes with both label values of the AUCs of one model on one run."""
    aucs = _class_aucs(np.ones((1, n)), sorting)[:, 0]
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
        sortings = [_auc_sorting(sa, y), _auc_sorting(sb, y)]
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
        sortings = [_auc_sorting(sc, y)]
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


# ---------------------------------------------------------------------------------------------- attention
def attention_in_boxes(delta: Any, boxes: Sequence[Any], image_size: Sequence[float]) -> dict[str, Any]:
    """How much of the contrast attention falls on the true findings.

    Args:
        delta: ``(N, h, w)`` non-negative attention (e.g. ``|M+ - M-|``) of N positive test images, on a grid
            covering the image: cell ``(i, j)`` covers ``[j W/w, (j+1) W/w) x [i H/h, (i+1) H/h)``.
        boxes: length N; entry n is a ``(k, 4)`` array / list of ``(x, y, w, h)`` true finding boxes of image n
            in the pixel frame of the image (``None`` or empty: no box, the image is skipped).
        image_size: ``(W, H)``.

    A cell is in a finding when it overlaps a box with positive area (:func:`cianet.losses.box_to_grid`).

    Returns:
        ``{"hit_rate", "mass_in_boxes", "area_share", "n_images"}`` over the ``n_images`` images with at least
        one box: ``hit_rate`` the share whose argmax cell (first in row-major order on ties) is in a finding;
        ``mass_in_boxes`` the mean of (attention in finding cells / total attention), over those images whose
        total attention is positive; ``area_share`` the mean share of cells in findings. ``None`` where no
        image qualifies. ``mass_in_boxes`` well above ``area_share`` means the attention concentrates on the
        findings.
    """
    from cianet.losses import box_to_grid

    d = _to_numpy(delta).astype(np.float64)
    if d.ndim != 3:
        raise ValueError(f"delta must be (N, h, w), got shape {d.shape}")
    if len(boxes) != d.shape[0]:
        raise ValueError(f"{d.shape[0]} attention maps for {len(boxes)} box lists")
    if not np.all(np.isfinite(d)) or (d < 0).any():
        raise ValueError("delta must be finite and non-negative")
    _, gh, gw = d.shape
    hits, masses, shares = [], [], []
    for n, image_boxes in enumerate(boxes):
        b = np.zeros((0, 4)) if image_boxes is None else np.asarray(_to_numpy(image_boxes), dtype=np.float64)
        if b.size == 0:
            continue
        if b.ndim == 1:
            b = b[None, :]
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"image {n}: boxes must be (k, 4) rows (x, y, w, h), got shape {b.shape}")
        inside = np.zeros((gh, gw), dtype=bool)
        for box in b:
            inside |= box_to_grid(box, image_size, (gw, gh)).numpy() > 0
        hits.append(float(inside.reshape(-1)[int(np.argmax(d[n]))]))
        total = d[n].sum()
        if total > 0:
            masses.append(d[n][inside].sum() / total)
        shares.append(inside.sum() / inside.size)

    def mean(values: list) -> float | None:
        return float(np.mean(values)) if values else None

    return {"hit_rate": mean(hits), "mass_in_boxes": mean(masses), "area_share": mean(shares), "n_images": len(hits)}


# ---------------------------------------------------------------------------------------------- calibration-free
# The paper's localization accuracy counts the cells with p > 0.5, so it depends on how the model's
# probabilities are calibrated. Two measures that do not: the pointing game (only the ranking of the cells of
# one map matters) and the T(IoU) accuracy at a probability threshold chosen on the validation split.

#: The candidate probability thresholds for :func:`choose_prob_threshold`: dense around the paper's 0.5 and
#: towards 1, where MIL-trained cell probabilities crowd.
PROB_THRESHOLD_GRID: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99,
                                          0.995, 0.999, 0.9995, 0.9999)


def pointing_hit(grid: Any, box_xywh: Sequence[float], image_size: Sequence[float], to_frame=None) -> float:
    """The pointing game of one box: does the highest cell of its class's map lie in the box?

    Args:
        grid: ``(h, w)`` cell scores of the box's class; logits rather than probabilities, which saturate
            (tie) at 1.0. Cell ``(i, j)`` covers ``[j W/w, (j+1) W/w) x [i H/h, (i+1) H/h)``; its point is its
            centre.
        box_xywh: the true box, in the frame ``to_frame`` maps into (default: the grid's image frame).
        image_size: ``(W, H)`` of the image the grid covers.
        to_frame: ``(x (n,), y (n,)) -> (x, y)``, points of the grid's frame to the box's frame (the inverse
            alignment); None: the same frame.

    Returns:
        1.0 when the centre of the highest cell lies in the closed box ``[x, x+w] x [y, y+h]``, else 0.0. When
        several cells share the maximum, the share of them whose centre is in the box: the expected hit of a
        uniformly random tie-break (a constant map scores the box's share of the cells, not a hit).
    """
    x, y, w, h = _check_box(box_xywh, "pointing_hit")
    g = _to_numpy(grid).astype(np.float64)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"grid must be a non-empty (h, w) array, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("grid contains NaN or inf")
    gh, gw = g.shape
    rows, cols = np.divmod(np.flatnonzero(g == g.max()), gw)
    px = (cols + 0.5) * float(image_size[0]) / gw
    py = (rows + 0.5) * float(image_size[1]) / gh
    if to_frame is not None:
        px, py = to_frame(px, py)
    inside = (px >= x) & (px <= x + w) & (py >= y) & (py <= y + h)
    return float(np.mean(inside))


def class_mean_accuracy(values: Any, class_indices: Any, class_names: Sequence[str] = BOX_LABELS) -> dict[str, float]:
    """``{class: mean of its boxes' values, ..., "Mean": mean over the classes with boxes}`` (NaN for a class
    without boxes, left out of "Mean"): the pointing game's layout, one row of :func:`accuracy_from_ious`."""
    v = np.asarray(values, dtype=np.float64)
    cls = np.asarray(class_indices, dtype=np.int64)
    if v.shape != cls.shape:
        raise ValueError(f"{v.size} values for {cls.size} class indices")
    row = {name: float(np.mean(v[cls == k])) if np.any(cls == k) else float("nan")
           for k, name in enumerate(class_names)}
    defined = [a for a in row.values() if not math.isnan(a)]
    row["Mean"] = float(np.mean(defined)) if defined else float("nan")
    return row


def choose_prob_threshold(
    ious_by_threshold: Any,
    class_indices: Any,
    grid: Sequence[float] = PROB_THRESHOLD_GRID,
    t_iou: float = 0.5,
) -> dict[str, Any] | None:
    """The probability threshold of the grid that maximizes the class-mean localization accuracy at
    ``T(IoU) = t_iou`` on (validation) boxes.

    Args:
        ious_by_threshold: ``(n_boxes, len(grid))``: column g holds each box's IoU with the region of cells
            with ``p > grid[g]``.
        class_indices: ``(n_boxes,)``.

    Ties (equal accuracy within 1e-12) go to the threshold nearest the paper's 0.5 in logit, then to the
    lower one, so a map that localizes nothing keeps 0.5.

    Returns:
        ``{"threshold", "accuracy" (the class mean at it), "accuracies" (one per grid value), "grid",
        "t_iou", "n_boxes"}``, or None without boxes.
    """
    iou = np.asarray(ious_by_threshold, dtype=np.float64)
    cls = np.asarray(class_indices, dtype=np.int64)
    grid = [float(t) for t in grid]
    if iou.ndim != 2 or iou.shape != (cls.size, len(grid)):
        raise ValueError(f"ious_by_threshold must be (n_boxes, {len(grid)}), got {iou.shape} for {cls.size} boxes")
    if not all(0.0 < t < 1.0 for t in grid):
        raise ValueError(f"probability thresholds must be in (0, 1), got {grid}")
    if cls.size == 0:
        return None
    acc = [_class_mean((iou[:, g] > t_iou).astype(np.float64), cls) for g in range(len(grid))]
    best = max(acc)
    candidates = [g for g in range(len(grid)) if acc[g] >= best - 1e-12]
    pick = min(candidates, key=lambda g: (abs(math.log(grid[g] / (1.0 - grid[g]))), grid[g]))
    return {"threshold": grid[pick], "accuracy": acc[pick], "accuracies": acc, "grid": grid,
            "t_iou": float(t_iou), "n_boxes": int(cls.size)}

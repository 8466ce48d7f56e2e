"""The paper's evaluation metrics (section 4.1, following Li et al., CVPR 2018).

Localization (8 box classes): for every ground-truth box, the predicted region is the union of that class's
grid cells with ``p > 0.5``; the box is found when ``IoU(region, box) > T(IoU)`` (strictly), an empty region
is a miss. Accuracy of a class is ``found / boxes``; "Mean" is the mean over the classes that have boxes.
IoUs are exact: cells and box are rectangles in the image frame, the cells are disjoint, so
``intersection = sum over positive cells of overlap(cell, box)`` and
``union = area(box) + area(positive cells) - intersection``.

Classification: per-class ROC AUC of the image score ``1 - prod_j (1 - p_j)`` (eq. 5's image probability).
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
) -> str:
    """Markdown table in the paper's layout: rows T(IoU) x model, columns the 8 box classes and "Mean".

    Args:
        results_by_model: ``{model: localization_accuracy(...) result}``.
        thresholds: which T(IoU) rows (floats or their ``f"{t:g}"`` keys); default all in the first model.
        std_by_model: optional ``{model: std result}`` (e.g. from :func:`mean_std_results`) -> "m ± s" cells.
    """
    if not results_by_model:
        raise ValueError("no results to format")
    first = next(iter(results_by_model.values()))
    keys = [t if isinstance(t, str) else f"{t:g}" for t in thresholds] if thresholds else list(first.keys())
    header = ["T(IoU)", "Model", *BOX_LABELS, "Mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in keys:
        for i, (model, res) in enumerate(results_by_model.items()):
            if key not in res:
                raise ValueError(f"model {model!r} has no result at T(IoU) = {key}")
            std_row = (std_by_model or {}).get(model, {}).get(key, {})
            cells = [_cell(res[key].get(c, float("nan")), std_row.get(c), digits) for c in (*BOX_LABELS, "Mean")]
            lines.append("| " + " | ".join([key if i == 0 else "", model, *cells]) + " |")
    return "\n".join(lines) + "\n"


def format_auc_table(
    results_by_model: Mapping[str, Mapping[str, float]],
    std_by_model: Mapping[str, Mapping[str, float]] | None = None,
    class_names: Sequence[str] = LABELS,
    digits: int = 2,
) -> str:
    """Markdown table of AUCs: one row per model, columns the 14 classes and "Mean" (as Table 4)."""
    if not results_by_model:
        raise ValueError("no results to format")
    header = ["Model", *class_names, "Mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, res in results_by_model.items():
        std = (std_by_model or {}).get(model, {})
        cells = [_cell(res.get(c, float("nan")), std.get(c), digits) for c in (*class_names, "Mean")]
        lines.append("| " + " | ".join([model, *cells]) + " |")
    return "\n".join(lines) + "\n"

"""Localization metrics of the 8 box classes (paper section 4.1, following Li et al., CVPR 2018).

For every ground-truth box, the predicted region is the union of that class's grid cells with ``p > 0.5``; the
box is found when ``IoU(region, box) > T(IoU)`` (strictly), an empty region is a miss. Accuracy of a class is
``found / boxes``; "Mean" is the mean over the classes that have boxes. IoUs are exact: cells and box are
rectangles in the image frame, the cells are disjoint, so ``intersection = sum over positive cells of
overlap(cell, box)`` and ``union = area(box) + area(positive cells) - intersection``.

Also here: the calibration-free measures (the pointing game, the accuracy at a probability threshold chosen on
validation) and the attention mechanism metric (how much of ``|M+ - M-|`` falls in the boxes).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from cianet.labels import BOX_LABELS
from cianet.metrics.arrays import to_numpy

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)

Box = Sequence[float]  # (image_index, class_index, x, y, w, h)


def _check_box(box: Sequence[float], what: str) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: box must be (x, y, w, h), got {box!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
        raise ValueError(f"{what}: box must have finite coordinates and non-negative size, got {box!r}")
    return x, y, w, h


def region_box_iou(region: np.ndarray, box_xywh: Sequence[float], cell_w: float = 1.0, cell_h: float = 1.0) -> float:
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
    p = to_numpy(probs)
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
    return region_box_iou(to_numpy(mask).astype(bool), box_xywh, 1.0, 1.0)


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
    counts = (
        np.bincount(cls, minlength=len(class_names))[: len(class_names)]
        if cls.size
        else np.zeros(len(class_names), dtype=np.int64)
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
    # lazy: cianet.metrics reads numpy arrays without importing torch
    from cianet.losses import box_to_grid

    d = to_numpy(delta).astype(np.float64)
    if d.ndim != 3:
        raise ValueError(f"delta must be (N, h, w), got shape {d.shape}")
    if len(boxes) != d.shape[0]:
        raise ValueError(f"{d.shape[0]} attention maps for {len(boxes)} box lists")
    if not np.all(np.isfinite(d)) or (d < 0).any():
        raise ValueError("delta must be finite and non-negative")
    _, gh, gw = d.shape
    hits, masses, shares = [], [], []
    for n, image_boxes in enumerate(boxes):
        b = np.zeros((0, 4)) if image_boxes is None else np.asarray(to_numpy(image_boxes), dtype=np.float64)
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
PROB_THRESHOLD_GRID: tuple[float, ...] = (
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.98,
    0.99,
    0.995,
    0.999,
    0.9995,
    0.9999,
)


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
    g = to_numpy(grid).astype(np.float64)
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


def class_mean(values: np.ndarray, cls: np.ndarray) -> float:
    """Mean over the classes present of the mean of ``values`` in each class."""
    return float(np.mean([np.mean(values[cls == c]) for c in np.unique(cls)]))


def class_mean_accuracy(values: Any, class_indices: Any, class_names: Sequence[str] = BOX_LABELS) -> dict[str, float]:
    """``{class: mean of its boxes' values, ..., "Mean": mean over the classes with boxes}`` (NaN for a class
    without boxes, left out of "Mean"): the pointing game's layout, one row of :func:`accuracy_from_ious`."""
    v = np.asarray(values, dtype=np.float64)
    cls = np.asarray(class_indices, dtype=np.int64)
    if v.shape != cls.shape:
        raise ValueError(f"{v.size} values for {cls.size} class indices")
    row = {
        name: float(np.mean(v[cls == k])) if np.any(cls == k) else float("nan") for k, name in enumerate(class_names)
    }
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
    acc = [class_mean((iou[:, g] > t_iou).astype(np.float64), cls) for g in range(len(grid))]
    best = max(acc)
    candidates = [g for g in range(len(grid)) if acc[g] >= best - 1e-12]
    pick = min(candidates, key=lambda g: (abs(math.log(grid[g] / (1.0 - grid[g]))), grid[g]))
    return {
        "threshold": grid[pick],
        "accuracy": acc[pick],
        "accuracies": acc,
        "grid": grid,
        "t_iou": float(t_iou),
        "n_boxes": int(cls.size),
    }

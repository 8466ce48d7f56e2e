"""cianet.metrics against brute-force references (rasterized IoU, pairwise AUC)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from cianet.labels import BOX_LABELS, LABELS
from cianet.metrics import (
    accuracy_from_ious,
    auc_per_class,
    box_ious,
    format_auc_table,
    format_localization_table,
    image_scores_from_logits,
    localization_accuracy,
    mask_iou,
    mean_std_results,
    roc_curves,
)
from helpers import pairwise_auc

SUB = 8  # rasterization lattice: 1/8 pixel


# ---------------------------------------------------------------------------------------------- references
def raster_iou(positive, box, image_size):
    """IoU on a 1/8-pixel lattice: exact when cell edges and box coordinates lie on the lattice."""
    gh, gw = positive.shape
    W, H = image_size
    fine_w, fine_h = W * SUB, H * SUB
    # Cell membership of each fine pixel (its centre decides, which is exact on the lattice).
    cols = ((np.arange(fine_w) + 0.5) / SUB * gw / W).astype(int)
    rows = ((np.arange(fine_h) + 0.5) / SUB * gh / H).astype(int)
    pred = positive[rows[:, None], cols[None, :]]
    x, y, w, h = box
    u = (np.arange(fine_w) + 0.5) / SUB
    v = (np.arange(fine_h) + 0.5) / SUB
    gt = ((v >= y) & (v < y + h))[:, None] & ((u >= x) & (u < x + w))[None, :]
    inter = np.logical_and(pred, gt).sum()
    union = np.logical_or(pred, gt).sum()
    return inter / union if union else 0.0


# ---------------------------------------------------------------------------------------------- IoU
def test_box_ious_match_rasterization_random():
    rng = np.random.default_rng(0)
    W, H = 64, 48  # grids chosen so that cell edges are on the 1/8 lattice
    for gw, gh in ((16, 12), (8, 6), (4, 16), (64, 48)):
        probs = rng.random((3, 8, gh, gw))
        probs[1] = np.where(probs[1] > 0.8, 0.9, 0.1)  # sparser regions
        boxes = []
        for _ in range(25):
            x, y = rng.integers(0, 8 * W) / 8, rng.integers(0, 8 * H) / 8
            w = rng.integers(1, 8 * W - int(x * 8) + 1) / 8
            h = rng.integers(1, 8 * H - int(y * 8) + 1) / 8
            boxes.append((int(rng.integers(0, 3)), int(rng.integers(0, 8)), x, y, w, h))
        got = box_ious(probs, boxes, (W, H))
        for k, (img, cls, *box) in enumerate(boxes):
            ref = raster_iou(probs[img, cls] > 0.5, box, (W, H))
            assert got[k] == pytest.approx(ref, abs=1e-12), (gw, gh, boxes[k])


def test_box_ious_known_values_and_torch_input():
    probs = torch.zeros(1, 8, 4, 4)
    probs[0, 2, 1, 1] = 0.9  # cell [32, 64) x [32, 64) of a 128 image
    boxes = [(0, 2, 32, 32, 32, 32), (0, 2, 32, 32, 64, 32), (0, 3, 0, 0, 10, 10)]
    ious = box_ious(probs, boxes, (128, 128))
    np.testing.assert_allclose(ious, [1.0, 0.5, 0.0])


def test_probability_exactly_half_is_not_positive():
    probs = np.full((1, 8, 2, 2), 0.5)
    assert box_ious(probs, [(0, 0, 0, 0, 10, 10)], (10, 10))[0] == 0.0


def test_mask_iou_pixel_exact():
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random((20, 30)) > 0.6
        x, y = rng.integers(0, 8 * 30) / 8, rng.integers(0, 8 * 20) / 8
        w, h = rng.integers(1, 80) / 8, rng.integers(1, 80) / 8
        assert mask_iou(mask, (x, y, w, h)) == pytest.approx(raster_iou(mask, (x, y, w, h), (30, 20)), abs=1e-12)
    assert mask_iou(np.zeros((5, 5), bool), (1, 1, 2, 2)) == 0.0


def test_localization_threshold_is_strict_and_empty_is_miss():
    # One positive cell [0, 8) x [0, 8); a box [0, 16) x [0, 8) gives IoU exactly 0.5.
    probs = np.zeros((2, 8, 4, 4))
    probs[0, 0, 0, 0] = 0.9
    boxes = [(0, 0, 0, 0, 16, 8), (1, 0, 0, 0, 8, 8)]  # second: empty prediction
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = localization_accuracy(probs, boxes, (32, 32), thresholds=(0.4, 0.5, 0.6))
    assert set(res) == {"0.4", "0.5", "0.6"}
    assert res["0.4"]["Atelectasis"] == 0.5  # IoU 0.5 > 0.4 found, empty missed
    assert res["0.5"]["Atelectasis"] == 0.0  # IoU == T is not > T
    # The 7 classes without boxes: NaN, out of the mean, with a warning naming them.
    for name in BOX_LABELS[1:]:
        assert math.isnan(res["0.4"][name])
    assert res["0.4"]["Mean"] == 0.5
    assert any("Cardiomegaly" in str(w.message) for w in caught)


def test_localization_accuracy_reference_and_mean():
    rng = np.random.default_rng(2)
    probs = rng.random((4, 8, 16, 16))
    boxes = [
        (int(rng.integers(0, 4)), c, *rng.integers(0, 100, 2), *rng.integers(8, 60, 2))
        for c in range(8)
        for _ in range(3)
    ]
    res = localization_accuracy(probs, boxes, (128, 128))
    assert list(res) == ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"]
    ious = [raster_iou(probs[i, c] > 0.5, b, (128, 128)) for i, c, *b in boxes]
    for t in (0.1, 0.3, 0.7):
        per = [np.mean([iou > t for iou, (_, c, *_) in zip(ious, boxes) if c == k]) for k in range(8)]
        for k, name in enumerate(BOX_LABELS):
            assert res[f"{t:g}"][name] == pytest.approx(per[k])
        assert res[f"{t:g}"]["Mean"] == pytest.approx(np.mean(per))
    # accuracy_from_ious on the same IoUs gives the same table.
    again = accuracy_from_ious(ious, [b[1] for b in boxes])
    assert again["0.3"] == pytest.approx(res["0.3"])


def test_localization_bad_input():
    with pytest.raises(ValueError, match="image index"):
        box_ious(np.zeros((1, 8, 2, 2)), [(1, 0, 0, 0, 1, 1)], (2, 2))
    with pytest.raises(ValueError, match="class ind"):
        localization_accuracy(np.zeros((1, 14, 2, 2)), [(0, 9, 0, 0, 1, 1)], (2, 2))


# ---------------------------------------------------------------------------------------------- scores, AUC
def test_image_scores_log_space():
    z = torch.tensor([[[[-60.0, -60.0], [-60.0, -60.0]], [[0.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    s = image_scores_from_logits(z)
    # 1 - (1 - sigmoid(-60))^4 ~ 4 e^-60 (a naive 1 - prod would give exactly 0).
    assert s[0, 0].item() == pytest.approx(4 * math.exp(-60), rel=1e-9)
    assert s[0, 1].item() == pytest.approx(1 - 0.5**4, rel=1e-12)
    s_np = image_scores_from_logits(z.numpy())
    assert isinstance(s_np, np.ndarray) and s_np.shape == (1, 2)
    rng = np.random.default_rng(3)
    zz = rng.normal(size=(3, 4, 3, 3))
    naive = 1 - np.prod(1 - 1 / (1 + np.exp(-zz)), axis=(2, 3))
    np.testing.assert_allclose(image_scores_from_logits(zz), naive, rtol=1e-10)


def test_auc_matches_pairwise_reference_with_ties():
    rng = np.random.default_rng(4)
    n = 60
    scores = np.round(rng.random((n, 14)), 1)  # heavy ties
    labels = (rng.random((n, 14)) > 0.6).astype(int)
    res = auc_per_class(scores, labels)
    refs = [pairwise_auc(scores[:, k], labels[:, k]) for k in range(14)]
    for k, name in enumerate(LABELS):
        assert res[name] == pytest.approx(refs[k], abs=1e-12)
    assert res["Mean"] == pytest.approx(np.mean(refs), abs=1e-12)


def test_auc_single_value_class_is_nan_and_warns():
    rng = np.random.default_rng(5)
    scores = rng.random((20, 14))
    labels = (rng.random((20, 14)) > 0.5).astype(int)
    labels[:, 13] = 0  # Hernia: no positive
    with pytest.warns(UserWarning, match="Hernia"):
        res = auc_per_class(scores, labels)
    assert math.isnan(res["Hernia"])
    expected = np.mean([pairwise_auc(scores[:, k], labels[:, k]) for k in range(13)])
    assert res["Mean"] == pytest.approx(expected)
    curves = roc_curves(scores, labels)
    assert "Hernia" not in curves and len(curves) == 13
    fpr, tpr = curves["Atelectasis"]
    assert np.trapezoid(tpr, fpr) == pytest.approx(res["Atelectasis"])


def test_auc_shape_errors():
    with pytest.raises(ValueError, match="must both be"):
        auc_per_class(np.zeros((3, 14)), np.zeros((3, 13)))


# ---------------------------------------------------------------------------------------------- tables
def test_mean_std_and_tables():
    a = {"0.1": {n: 0.5 for n in BOX_LABELS} | {"Mean": 0.5}}
    b = {"0.1": {n: 0.7 for n in BOX_LABELS} | {"Mean": 0.7}}
    b["0.1"]["Nodule"] = float("nan")
    mean, std = mean_std_results([a, b])
    assert mean["0.1"]["Mass"] == pytest.approx(0.6) and std["0.1"]["Mass"] == pytest.approx(0.1)
    assert mean["0.1"]["Nodule"] == 0.5  # NaN fold ignored
    table = format_localization_table({"Base": a, "Ours": mean}, [0.1], std_by_model={"Ours": std})
    lines = table.strip().splitlines()
    assert lines[0].startswith("| T(IoU) | Model | Atelectasis |") and lines[0].endswith("| Mean |")
    assert lines[2].startswith("| 0.1 | Base | 0.50 |")
    assert "| Ours | 0.60 ± 0.10 |" in lines[3]
    auc = format_auc_table({"m": {n: 0.8 for n in LABELS} | {"Mean": 0.8, "Hernia": float("nan")}})
    row = auc.strip().splitlines()[2]
    assert row.count("0.80") == 14 and "n/a" in row

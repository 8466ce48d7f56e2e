"""Tie-free AUC (the MIL evidence), probability display, and the calibration-free localization measures (pointing
game, threshold chosen on validation), each against a slow loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cianet.metrics import (
    PROB_THRESHOLD_GRID,
    accuracy_from_ious,
    auc_per_class,
    bootstrap_class_mean_difference,
    bootstrap_localization_difference,
    choose_prob_threshold,
    class_mean_accuracy,
    class_mean_ci,
    format_probability,
    image_evidence_from_logits,
    image_scores_from_logits,
    localization_ci,
    pointing_hit,
    verdict,
)
from helpers import pairwise_auc


# ---------------------------------------------------------------------------------------------- references
def evidence_reference(logits, rescale=False):
    """sum_j -log(1 - p_j) per (image, class) in Python floats, cell by cell."""
    n, c, h, w = logits.shape
    out = np.zeros((n, c))
    for i in range(n):
        for k in range(c):
            total = 0.0
            for z in np.asarray(logits[i, k], dtype=np.float64).ravel().tolist():
                if rescale:
                    total += -math.log1p(-0.02 / (1.0 + math.exp(-z)))
                else:  # softplus(z), stable for large |z|
                    total += max(z, 0.0) + math.log1p(math.exp(-abs(z)))
            out[i, k] = total
    return out


def tied_share(values):
    """Share of the values equal to at least one other value of the column."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return float(np.mean(counts[inverse] > 1))


def saturating_logits(rng, n=40, c=3, h=4, w=4):
    """Cell logits whose image scores are exactly 1.0 in float32 for most images, with labels that follow the
    logits (so that the order among the saturated images carries the AUC)."""
    base = rng.normal(0.0, 1.0, (n, c, 1, 1))
    logits = (18.0 + 4.0 * base + rng.normal(0.0, 0.5, (n, c, h, w))).astype(np.float32)
    logits[: n // 8] -= 30.0  # a few unsaturated images
    labels = (base[:, :, 0, 0] + rng.normal(0.0, 0.7, (n, c)) > 0).astype(np.float64)
    return logits, labels


# ---------------------------------------------------------------------------------------------- evidence, AUC
def test_evidence_auc_is_exact_where_float32_scores_saturate():
    logits, labels = saturating_logits(np.random.default_rng(0))
    scores = image_scores_from_logits(logits)
    assert scores.dtype == np.float32 and np.mean(scores == 1.0) > 0.5  # the problem: scores tie at 1.0
    evidence = image_evidence_from_logits(logits)
    assert evidence.dtype == np.float64
    np.testing.assert_allclose(evidence, evidence_reference(logits), rtol=1e-12)
    got = auc_per_class(evidence, labels, ["a", "b", "c"])
    for k in range(labels.shape[1]):
        want = pairwise_auc(evidence_reference(logits)[:, k], labels[:, k])
        assert got["abc"[k]] == pytest.approx(want, abs=1e-12)
        assert tied_share(evidence[:, k]) == 0.0
        # the saturated scores rank differently (ties count 1/2): the evidence is what changes the figure
        assert abs(pairwise_auc(scores[:, k], labels[:, k]) - want) > 0.01


@pytest.mark.parametrize("rescale", [False, True])
def test_evidence_is_monotone_in_the_score_and_follows_rescale(rescale):
    rng = np.random.default_rng(1)
    logits = rng.normal(-2.0, 3.0, (12, 2, 3, 3)).astype(np.float32)
    evidence = image_evidence_from_logits(torch.from_numpy(logits), rescale=rescale)  # torch in, numpy out
    np.testing.assert_allclose(evidence, evidence_reference(logits, rescale), rtol=1e-12)
    # the image score is 1 - exp(-A): same order, and equal to the float32 score where that does not saturate
    np.testing.assert_allclose(-np.expm1(-evidence), image_scores_from_logits(logits, rescale=rescale), rtol=1e-5)
    with pytest.raises(ValueError, match="N, C, H, W"):
        image_evidence_from_logits(logits[0])


def test_evidence_of_very_negative_logits_stays_positive_and_ordered():
    logits = np.array([-200.0, -150.0, -120.0, -110.0]).reshape(4, 1, 1, 1)
    evidence = image_evidence_from_logits(logits)[:, 0]
    assert np.all(evidence > 0) and np.all(np.diff(evidence) > 0)  # no underflow to a tie at 0


# ---------------------------------------------------------------------------------------------- display
@pytest.mark.parametrize(
    "p, text",
    [
        (1.0, "> 0.9999"),
        (np.float32(0.99999994), "> 0.9999"),
        (0.99995, "> 0.9999"),
        (0.99994, "0.9999"),
        (0.5, "0.5000"),
        (0.123456, "0.1235"),
        (0.00005, "0.0001"),
        (0.00004, "< 0.0001"),
        (1e-30, "< 0.0001"),
        (0.0, "0"),
        (None, "n/a"),
        (float("nan"), "n/a"),
    ],
)
def test_format_probability(p, text):
    assert format_probability(p) == text


def test_format_probability_digits_and_no_wall_of_ones():
    assert format_probability(0.999, digits=2) == "> 0.99" and format_probability(0.004, digits=2) == "< 0.01"
    shown = {format_probability(p) for p in (1.0, 0.9999999, 0.99996)}
    assert shown == {"> 0.9999"} and not any(s.startswith("1.0") for s in shown)


# ---------------------------------------------------------------------------------------------- pointing game
def pointing_reference(grid, box, image_size, to_frame=None):
    """Loops over the cells: the maximal ones, their centres, the share inside the closed box."""
    gh, gw = len(grid), len(grid[0])
    best = max(max(row) for row in grid)
    hits, tops = 0, 0
    for i in range(gh):
        for j in range(gw):
            if grid[i][j] == best:
                cx, cy = (j + 0.5) * image_size[0] / gw, (i + 0.5) * image_size[1] / gh
                if to_frame is not None:
                    cx, cy = (float(v[0]) for v in to_frame(np.array([cx]), np.array([cy])))
                x, y, w, h = box
                tops += 1
                hits += x <= cx <= x + w and y <= cy <= y + h
    return hits / tops


def test_pointing_hit_matches_loop_reference_with_ties():
    rng = np.random.default_rng(2)
    for trial in range(300):
        gh, gw = rng.integers(1, 7, size=2)
        grid = rng.integers(0, 4, size=(gh, gw)).astype(np.float32)  # few levels: frequent ties
        size = (float(rng.uniform(10, 60)), float(rng.uniform(10, 60)))
        box = (rng.uniform(-5, size[0]), rng.uniform(-5, size[1]), rng.uniform(0, 30), rng.uniform(0, 30))
        shift = (lambda x, y: (x + 3.0, 0.5 * y)) if trial % 2 else None
        assert pointing_hit(grid, box, size, shift) == pytest.approx(
            pointing_reference(grid.tolist(), box, size, shift), abs=1e-15
        )


def test_pointing_hit_hand_built():
    grid = np.full((4, 4), -5.0)
    grid[1, 2] = 30.0  # centre (10, 6) on a 16 x 16 image: 4 px cells
    assert pointing_hit(grid, (8, 4, 4, 4), (16, 16)) == 1.0
    assert pointing_hit(grid, (10, 6, 0, 0), (16, 16)) == 1.0  # the closed box holds its corner point
    assert pointing_hit(grid, (0, 0, 8, 16), (16, 16)) == 0.0
    # a saturated map (every probability 1.0) still points by logit; a constant map scores the box's share
    assert pointing_hit(np.full((4, 4), 7.0), (0, 0, 8, 16), (16, 16)) == 0.5
    with pytest.raises(ValueError):
        pointing_hit(np.full((2, 2), np.nan), (0, 0, 1, 1), (4, 4))
    with pytest.raises(ValueError):
        pointing_hit(grid, (0, 0, -1, 1), (16, 16))


def test_class_mean_accuracy_matches_loops_and_skips_empty_classes():
    rng = np.random.default_rng(3)
    values, classes = rng.random(50), rng.choice([0, 2, 3], size=50)
    row = class_mean_accuracy(values, classes, ["a", "b", "c", "d"])
    for k, name in enumerate("abcd"):
        sel = [v for v, c in zip(values, classes) if c == k]
        if sel:
            assert row[name] == pytest.approx(sum(sel) / len(sel))
        else:
            assert math.isnan(row[name])
    assert row["Mean"] == pytest.approx(np.mean([row["a"], row["c"], row["d"]]))


# ---------------------------------------------------------------------------------------------- val threshold
def choose_reference(iou_grid, classes, grid, t_iou=0.5):
    accs = []
    for g in range(len(grid)):
        per_class = {}
        for i, c in enumerate(classes):
            per_class.setdefault(int(c), []).append(1.0 if iou_grid[i][g] > t_iou else 0.0)
        accs.append(sum(sum(v) / len(v) for v in per_class.values()) / len(per_class))
    best = max(accs)
    ties = [g for g in range(len(grid)) if accs[g] >= best - 1e-12]
    ties.sort(key=lambda g: (abs(math.log(grid[g] / (1 - grid[g]))), grid[g]))
    return grid[ties[0]], accs[ties[0]]


def test_choose_prob_threshold_matches_loop_reference():
    rng = np.random.default_rng(4)
    grid = PROB_THRESHOLD_GRID
    for _ in range(30):
        n = int(rng.integers(1, 25))
        iou_grid = rng.random((n, len(grid))) * rng.uniform(0.3, 1.2)
        classes = rng.integers(0, 4, size=n)
        got = choose_prob_threshold(iou_grid, classes)
        want = choose_reference(iou_grid.tolist(), classes.tolist(), list(grid))
        assert (got["threshold"], got["accuracy"]) == (want[0], pytest.approx(want[1]))
        assert got["n_boxes"] == n and len(got["accuracies"]) == len(grid)


def test_choose_prob_threshold_ties_keep_the_paper_threshold():
    grid = (0.1, 0.3, 0.5, 0.7, 0.9)
    assert choose_prob_threshold(np.zeros((3, 5)), [0, 1, 1], grid)["threshold"] == 0.5  # nothing localizes
    found = np.array([[0.0, 0.0, 0.0, 0.6, 0.6], [0.0, 0.0, 0.0, 0.7, 0.8]])
    assert choose_prob_threshold(found, [0, 1], grid)["threshold"] == 0.7  # nearest 0.5 among the best
    sym = np.array([[0.6, 0.0, 0.0, 0.0, 0.6]])  # 0.1 and 0.9: the same logit distance -> the lower
    assert choose_prob_threshold(sym, [0], grid)["threshold"] == 0.1
    assert choose_prob_threshold(np.zeros((0, 5)), [], grid) is None
    with pytest.raises(ValueError):
        choose_prob_threshold(np.zeros((2, 4)), [0, 1], grid)


def test_add_val_threshold_applies_the_validation_choice_to_test():
    from cianet.run.scoring import NO_VALIDATION, add_val_threshold

    rng = np.random.default_rng(5)
    g = len(PROB_THRESHOLD_GRID)
    names = ["a", "b"]
    val = {"iou_grid": rng.random((9, g)), "box_classes": rng.integers(0, 2, 9)}
    t_cls = np.array([0, 1, 1, 0, 1, 0])
    test = {
        "iou_grid": rng.random((6, g)),
        "box_classes": t_cls,
        "ious": rng.random(6),
        "localization": accuracy_from_ious(rng.random(6), t_cls, (0.1, 0.5), names),
    }
    add_val_threshold(test, val)
    vt = test["val_threshold"]
    chosen = choose_prob_threshold(val["iou_grid"], val["box_classes"])
    assert vt["threshold"] == chosen["threshold"] and vt["val_accuracy"] == chosen["accuracy"]
    col = test["iou_grid"][:, PROB_THRESHOLD_GRID.index(vt["threshold"])]
    assert vt["localization"] == accuracy_from_ious(col, t_cls, (0.1, 0.5), names)
    np.testing.assert_array_equal(test["ious_val"], col)
    none = add_val_threshold(dict(test), None)["val_threshold"]
    assert none["threshold"] is None and none["reason"] == NO_VALIDATION
    empty = {"iou_grid": np.zeros((0, g)), "box_classes": np.zeros(0, int)}
    assert "no boxes" in add_val_threshold(dict(test), empty)["val_threshold"]["reason"]


# ---------------------------------------------------------------------------------------------- bootstrap
def test_class_mean_bootstrap_of_hits_equals_the_localization_bootstrap():
    rng = np.random.default_rng(6)
    runs = [(rng.random(30), rng.random(30), rng.integers(0, 3, 30)) for _ in range(3)]
    t = 0.4
    loc = bootstrap_localization_difference(
        [a for a, _, _ in runs], [b for _, b, _ in runs], [c for _, _, c in runs], threshold=t, n_boot=300, seed=9
    )
    hits = bootstrap_class_mean_difference(
        [(a > t).astype(float) for a, _, _ in runs],
        [(b > t).astype(float) for _, b, _ in runs],
        [c for _, _, c in runs],
        n_boot=300,
        seed=9,
    )
    assert {k: v for k, v in loc.items() if k != "threshold"} == {k: v for k, v in hits.items() if k != "metric"}
    assert class_mean_ci((runs[0][0] > t).astype(float), runs[0][2], n_boot=200, seed=2) == localization_ci(
        runs[0][0], runs[0][2], threshold=t, n_boot=200, seed=2
    )
    # fractional values (ties in the pointing game): the point difference is the class-mean difference
    a, b, c = rng.random(20), rng.random(20), rng.integers(0, 2, 20)
    r = bootstrap_class_mean_difference(a, b, c, n_boot=50)
    want = np.mean([a[c == k].mean() for k in (0, 1)]) - np.mean([b[c == k].mean() for k in (0, 1)])
    assert r["diff"] == pytest.approx(want) and r["metric"] == "pointing game accuracy"
    assert "pointing game accuracy" in verdict(r)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_class_mean_difference(np.full(3, np.nan), np.zeros(3), np.zeros(3, int), n_boot=10)


# ---------------------------------------------------------------------------------------------- the scorer
class BrightCells(torch.nn.Module):
    """A stand-in network whose cell logits are 25 +- 40 x the cell's mean brightness (+ for even classes, - for
    odd ones): every image score is 1.0 in float32, yet the even classes' highest cells are on the lesions
    (bright squares: Mass hits) and the odd ones' are not (Nodule misses)."""

    test_upsample = 16

    def forward(self, pos, neg, upsample=False, return_feats=True):
        return {"logits": self.test_grid_logits(pos, 8), "f_bar": pos}

    def test_grid_logits(self, f_bar, side=16):
        cells = torch.nn.functional.adaptive_avg_pool2d(f_bar[:, :1], side)
        sign = torch.tensor([1.0, -1.0] * 7).view(1, 14, 1, 1)
        return 25.0 + 40.0 * sign * cells


@pytest.fixture(scope="module")
def saturated_run(tmp_path_factory):
    """The saturated stand-in network, a tiny data set's test loader, and the reference grids of each batch."""
    from cianet.run.forward import forward_grids
    from cianet.run.loaders import make_loaders
    from cianet.run.protocol import build_run_data
    from helpers import tiny_config, write_tiny_nih

    tmp = tmp_path_factory.mktemp("saturated")
    root = write_tiny_nih(tmp / "data", n_patients=30)
    cfg = tiny_config(tmp / "run", root, model__kind="baseline")
    model = BrightCells()
    _, _, _, loader = make_loaders(cfg, build_run_data(cfg))
    outs = [(b, forward_grids(model, b, upsample=True)) for b in loader]
    return model, loader, outs


def pixel_iou(positive_cells, box, size):
    """IoU of the union of positive cells and an integer box, counted in pixels."""
    gh = positive_cells.shape[0]
    pred = np.kron(positive_cells, np.ones((size // gh, size // gh), dtype=bool))
    x, y, w, h = (int(round(v)) for v in box)
    gt = np.zeros((size, size), dtype=bool)
    gt[y : y + h, x : x + w] = True
    union = np.logical_or(pred, gt).sum()
    return np.logical_and(pred, gt).sum() / union if pred.any() else 0.0


def test_scorer_auc_ranks_by_evidence_and_boxes_get_pointing_and_threshold_grid(saturated_run):
    from cianet.run.scoring import evaluate

    model, loader, outs = saturated_run
    with pytest.warns(UserWarning):  # classes without positives/boxes in the tiny data
        m = evaluate(model, loader, torch.device("cpu"), progress=False, keep_predictions=True)
    assert np.all(m["scores"] == 1.0)  # every score saturates ...
    logits = torch.cat([o["logits"] for _, o in outs]).numpy()
    np.testing.assert_allclose(m["evidence"], evidence_reference(logits), rtol=1e-12)
    for k, name in enumerate(list(m["auc"])[:-1]):  # ... and the AUC still ranks, by the evidence
        y = m["labels"][:, k]
        if 0 < y.sum() < len(y):
            assert m["auc"][name] == pytest.approx(pairwise_auc(m["evidence"][:, k], y), abs=1e-12)
            assert m["auc"][name] != 0.5 and tied_share(m["evidence"][:, k]) == 0.0
    # per box: the pointing game by logit, and the IoU at every grid threshold (pixel counts)
    ref_point, ref_grid = [], []
    for batch, o in outs:
        s = batch["image"].shape[-1]
        for b in range(batch["image"].shape[0]):
            for row in batch["boxes"][b]:
                if row[0] < 0 or row[0] >= 8:
                    continue
                k, box = int(row[0]), row[1:].tolist()
                grid = o["test_logits"][b, k].numpy()
                ref_point.append(pointing_reference(grid.tolist(), box, (s, s)))
                probs = torch.sigmoid(o["test_logits"][b, k]).numpy()
                ref_grid.append([pixel_iou(probs > t, box, s) for t in PROB_THRESHOLD_GRID])
    assert len(ref_point) == m["n_boxes"] > 0 and 0 < np.mean(ref_point) < 1  # hits and misses
    np.testing.assert_allclose(m["pointing"], ref_point, atol=1e-15)
    np.testing.assert_allclose(m["iou_grid"], ref_grid, atol=1e-12)
    np.testing.assert_array_equal(m["iou_grid"][:, PROB_THRESHOLD_GRID.index(0.5)], m["ious"])
    want = class_mean_accuracy(m["pointing"], m["box_classes"], list(m["pointing_game"])[:-1])
    assert list(m["pointing_game"]) == list(want)
    np.testing.assert_allclose(list(m["pointing_game"].values()), list(want.values()))  # NaN == NaN here


@pytest.mark.slow
def test_scorer_pointing_maps_cell_centres_back_through_the_alignment(saturated_run, tmp_path):
    """A constant alignment shifts the image by tx (normalized): a cell centre c of the aligned frame is the
    point c + tx s / 2 of the original frame, where the boxes are."""
    from cianet.run.checkpoints import load_alignment
    from cianet.run.forward import align_batch, forward_grids
    from cianet.run.scoring import evaluate
    from helpers import write_alignment

    model, loader, _ = saturated_run
    tx = 0.25
    net = load_alignment(write_alignment(tmp_path / "align.pt", tx=tx)).net
    with pytest.warns(UserWarning):
        m = evaluate(model, loader, torch.device("cpu"), align_net=net, progress=False, keep_predictions=True)

    def shift_by(dx):
        return lambda x, y: (x + dx, y)

    ref = []
    for batch in loader:
        s = batch["image"].shape[-1]
        with torch.no_grad():
            o = forward_grids(model, align_batch(net, batch), upsample=True)
        for b in range(batch["image"].shape[0]):
            for row in batch["boxes"][b]:
                if 0 <= row[0] < 8:
                    shift = shift_by(tx * s / 2)
                    ref.append(
                        pointing_reference(o["test_logits"][b, int(row[0])].tolist(), row[1:].tolist(), (s, s), shift)
                    )
    np.testing.assert_allclose(m["pointing"], ref, atol=1e-9)
    np.testing.assert_array_equal(m["iou_grid"][:, PROB_THRESHOLD_GRID.index(0.5)], m["ious"])


def test_predictions_keep_evidence_and_pointing_and_old_files_say_to_reevaluate(tmp_path):
    from cianet.errors import InputError
    from cianet.run.scoring import PREDICTIONS, read_predictions, write_metrics

    rng = np.random.default_rng(7)
    m = {
        "localization": {"0.5": {"Mass": 0.5, "Mean": 0.5}},
        "auc": {"Mass": 0.7, "Mean": 0.7},
        "pointing_game": {"Mass": 0.25, "Mean": 0.25},
        "n_images": 4,
        "n_boxes": 2,
        "val_threshold": {
            "threshold": 0.9,
            "t_iou": 0.5,
            "val_accuracy": 0.4,
            "val_boxes": 5,
            "localization": {"0.5": {"Mass": 0.75, "Mean": 0.75}},
        },
        "scores": np.ones((4, 1), np.float32),
        "evidence": rng.random((4, 1)) * 40,
        "labels": np.eye(4, 1),
        "ious": rng.random(2),
        "ious_val": rng.random(2),
        "pointing": np.array([0.0, 0.5]),
        "box_classes": np.array([0, 0]),
        "box_images": np.array([0, 1]),
    }
    write_metrics(tmp_path, m)
    got = read_predictions(tmp_path, need=("evidence", "pointing"))
    for key in ("evidence", "pointing", "ious_val"):
        np.testing.assert_array_equal(got[key], m[key])
    assert got["evidence"].dtype == np.float64
    md = (tmp_path / "metrics.md").read_text()
    assert "## Pointing game" in md and "p > 0.9 (chosen on 5 validation boxes" in md
    saved = __import__("json").loads((tmp_path / "metrics.json").read_text())
    assert saved["pointing_game"] == m["pointing_game"] and saved["val_threshold"] == m["val_threshold"]
    with np.load(tmp_path / PREDICTIONS) as z:  # a file written before the evidence existed
        old = {k: z[k] for k in ("scores", "labels", "ious", "box_classes", "box_images")}
    np.savez(tmp_path / PREDICTIONS, **old)
    assert "evidence" not in read_predictions(tmp_path)
    with pytest.raises(InputError, match=r"has no evidence.*cianet evaluate --run"):
        read_predictions(tmp_path, need=("evidence",))


# ---------------------------------------------------------------------------------------------- experiment tables
def _predictions(run_dir, rng, classes, labels, with_val):
    run_dir.mkdir(parents=True)
    n = len(classes)
    arrays = dict(
        ious=rng.random(n),
        box_classes=classes,
        box_images=np.zeros(n, int),
        labels=labels,
        scores=np.ones(labels.shape, np.float32),
        evidence=20 + 5 * rng.random(labels.shape) + 3 * labels,
        pointing=rng.choice([0.0, 0.5, 1.0], n),
    )
    if with_val:
        arrays["ious_val"] = rng.random(n)
    np.savez(run_dir / "predictions.npz", **arrays)
    return arrays


def test_compare_runs_ranks_by_evidence_and_adds_the_pointing_game(tmp_path):
    from cianet.errors import InputError
    from cianet.evaluation.comparisons import compare_runs, comparison_markdown

    rng = np.random.default_rng(8)
    classes, labels = rng.integers(0, 3, 15), (rng.random((20, 4)) < 0.5).astype(float)
    a = _predictions(tmp_path / "a", rng, classes, labels, True)
    b = _predictions(tmp_path / "b", rng, classes, labels, True)
    comp = compare_runs([[tmp_path / "a"]], [[tmp_path / "b"]], thresholds=(0.5,), n_boot=200)
    want_a = np.mean([pairwise_auc(a["evidence"][:, k], labels[:, k]) for k in range(4)])
    assert comp["auc"]["a"] == pytest.approx(want_a) and comp["auc"]["a"] > 0.6  # scores all 1.0: 0.5
    assert comp["pointing"] == bootstrap_class_mean_difference(a["pointing"], b["pointing"], classes, n_boot=200)
    assert comp["val 0.5"]["diff"] == pytest.approx(
        bootstrap_localization_difference(a["ious_val"], b["ious_val"], classes, n_boot=200)["diff"]
    )
    md = comparison_markdown({"A - B": comp})
    assert "| pointing game |" in md and "| mean AUC (by evidence) |" in md and "p threshold from val" in md
    _predictions(tmp_path / "c", rng, classes, labels, False)  # no validation split: no "val 0.5" row
    assert "val 0.5" not in compare_runs([[tmp_path / "a"]], [[tmp_path / "c"]], thresholds=(0.5,), n_boot=50)
    with np.load(tmp_path / "c" / "predictions.npz") as z:
        old = {k: z[k] for k in z.files if k not in ("evidence", "pointing")}
    np.savez(tmp_path / "c" / "predictions.npz", **old)
    with pytest.raises(InputError, match="has no evidence, pointing.*cianet evaluate"):
        compare_runs([[tmp_path / "a"]], [[tmp_path / "c"]])


# ---------------------------------------------------------------------------------------------- a trained run
@pytest.mark.slow  # trains a tiny run with a validation split (~5 s), then `cianet evaluate`s it
def test_trained_run_has_tie_free_evidence_pointing_and_a_validation_threshold(tmp_path, capsys, tiny_nih, monkeypatch):
    import json

    from cianet.cli import main
    from cianet.evaluation.evaluate import load_run
    from cianet.run.scoring import evaluate, read_predictions
    from cianet.training.loop import fit
    from helpers import tiny_config

    # one epoch at 32 px: the measures, not the learning, are under test
    cfg = tiny_config(
        tmp_path / "run",
        tiny_nih(40),
        protocol__val_share=0.25,
        protocol__unannotated_ratio=0.5,
        data__image_size=32,
    )
    cfg.optim.epochs = 1
    run = fit(cfg)
    m = json.loads((run / "metrics.json").read_text())
    pred = read_predictions(run, need=("evidence", "pointing"))
    for k, name in enumerate(list(m["auc"])[:-1]):
        # the target: fewer than 1% tied evidence values per class (scores of confident images tie at 1.0)
        assert tied_share(pred["evidence"][:, k]) < 0.01
        y = pred["labels"][:, k]
        if 0 < y.sum() < len(y):
            assert m["auc"][name] == pytest.approx(pairwise_auc(pred["evidence"][:, k], y), abs=1e-12)
    box_names = list(m["pointing_game"])[:-1]
    want = class_mean_accuracy(pred["pointing"], pred["box_classes"], box_names)
    assert m["pointing_game"]["Mean"] == pytest.approx(want["Mean"])
    # the threshold is the validation images' choice, and the test accuracy is the one at it
    vt = m["val_threshold"]
    loaded = load_run(run, device="cpu")
    with pytest.warns(UserWarning):
        val = evaluate(
            loaded.model,
            loaded.val_loader,
            loaded.device,
            progress=False,
            align_net=loaded.align_net,
            rescale=loaded.cfg.loss.mil_rescale,
        )
    assert val["n_boxes"] == vt["val_boxes"] > 0
    assert (
        vt["threshold"]
        == choose_reference(val["iou_grid"].tolist(), val["box_classes"].tolist(), list(PROB_THRESHOLD_GRID))[0]
    )
    with pytest.warns(UserWarning):
        at = accuracy_from_ious(pred["ious_val"], pred["box_classes"], [0.5], box_names)["0.5"]
    assert at["Mean"] == pytest.approx(vt["localization"]["0.5"]["Mean"])
    md = (run / "metrics.md").read_text()
    assert "## Pointing game" in md and f"p > {vt['threshold']:g}" in md
    # `cianet evaluate` measures the same (its own validation pass), with a pointing-game interval; its plots are
    # test_evaluate_plots' subject
    monkeypatch.setattr("cianet.evaluation.evaluate.write_evaluation_plots", lambda *a, **k: {})
    assert main(["evaluate", "--run", str(run), "--device", "cpu", "--no-progress", "--bootstrap", "100"]) == 0
    capsys.readouterr()
    again = json.loads((run / "metrics.json").read_text())
    assert again["val_threshold"] == vt and again["auc"] == m["auc"] and again["pointing_game"] == m["pointing_game"]
    assert again["ci"]["pointing"]["value"] == pytest.approx(m["pointing_game"]["Mean"])


# ---------------------------------------------------------------------------------------------- displays
def test_viewer_and_model_card_show_readable_probabilities_and_the_new_measures(tmp_path):
    import json

    from cianet.evaluation.viewer import shown_probabilities
    from cianet.inference.model_card import format_card, model_card
    from helpers import tiny_config

    assert shown_probabilities({"Mass": 1.0, "Nodule": 0.25, "Hernia": 3e-9}) == {
        "Mass": "> 0.9999",
        "Nodule": "0.2500",
        "Hernia": "< 0.0001",
    }
    loc = {"0.5": {"Mass": 0.5, "Mean": 0.5}}
    (tmp_path / "metrics.json").write_text(
        json.dumps(
            {
                "auc": {"Mass": 0.7, "Mean": 0.7},
                "localization": loc,
                "n_images": 3,
                "n_boxes": 2,
                "pointing_game": {"Mass": 0.625, "Mean": 0.625},
                "val_threshold": {"threshold": 0.995, "localization": {"0.5": {"Mass": 0.75, "Mean": 0.75}}},
            }
        )
    )
    card = model_card(tmp_path, tiny_config(tmp_path / "run"), ["Mass"], [0.5])
    assert card["metrics"]["pointing_game_mean"] == 0.625
    assert card["metrics"]["val_threshold"] == {"threshold": 0.995, "localization_mean": {"0.5": 0.75}}
    text = format_card({"card": card})
    assert "pointing game (calibration-free): 0.625" in text
    assert "localization at p > 0.995 (chosen on the validation split): T=0.5: 0.750" in text


def test_cross_dataset_restriction_keeps_evidence_and_pointing_of_the_scored_classes():
    from cianet.evaluation.cross_dataset import restrict_metrics
    from cianet.labels import NIH_LABEL_SET

    rng = np.random.default_rng(10)
    n = 30
    labels = (rng.random((n, 14)) < 0.4).astype(np.float32)
    evidence = rng.random((n, 14)) * 50
    cls = np.array([0, 4, 5, 5, 6])
    metrics = {
        "scores": np.ones((n, 14), np.float32),
        "evidence": evidence,
        "labels": labels,
        "ious": rng.random(5),
        "pointing": np.array([1.0, 0.0, 0.5, 1.0, 1.0]),
        "iou_grid": rng.random((5, 3)),
        "box_classes": cls,
        "box_images": np.arange(5),
        "n_boxes": 5,
    }
    scored = ("Mass", "Nodule", "Edema")
    out = restrict_metrics(metrics, NIH_LABEL_SET, scored, (0.5,))
    cols = [NIH_LABEL_SET.index(c) for c in scored]
    np.testing.assert_array_equal(out["evidence"], evidence[:, cols])
    assert out["auc"]["Mass"] == pytest.approx(pairwise_auc(evidence[:, 4], labels[:, 4]))  # not 0.5: scores tie
    assert out["pointing_game"] == {"Mass": 0.0, "Nodule": 0.75, "Mean": 0.375}
    np.testing.assert_array_equal(out["iou_grid"], metrics["iou_grid"][1:4])

"""cianet.metrics statistics (bootstrap intervals, verdicts, attention metric) against slow loop references.

The bootstrap references replay the resampling scheme documented in cianet.metrics.bootstrap with the same RNG draws
(run choice by ``rng.integers``, then per run, per class in ascending order, one ``rng.random((m_s, n_c))``;
for AUC one ``rng.random((m_s, n))`` per run) and evaluate every replicate with explicit Python loops.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import cianet.metrics.bootstrap as bootstrap  # owns the row-block size
from cianet.metrics import (
    accuracy_from_ious,
    attention_in_boxes,
    auc_ci,
    auc_per_class,
    bootstrap_auc_difference,
    bootstrap_localization_difference,
    localization_ci,
    verdict,
)
from helpers import pairwise_auc


# ---------------------------------------------------------------------------------------------- references
def ref_class_mean_acc(ious, classes, t):
    """Mean over present classes of the share of boxes with IoU > t, by loops."""
    per = []
    for c in sorted(set(int(v) for v in classes)):
        sel = [float(i) > t for i, k in zip(ious, classes) if int(k) == c]
        per.append(np.mean(sel))
    return float(np.mean(per))


def ref_index(u, n):
    return min(int(u * n), n - 1)


def ref_slots(rng, n_runs, n_boot):
    """Run choice of each (replicate, slot) and, per run, its slots in row-major order."""
    if n_runs > 1:
        choice = rng.integers(0, n_runs, size=(n_boot, n_runs))
    else:
        choice = np.zeros((n_boot, 1), dtype=np.int64)
    positions = [
        [(b, k) for b in range(n_boot) for k in range(choice.shape[1]) if choice[b, k] == s] for s in range(n_runs)
    ]
    return choice.shape[1], positions


def ref_quantiles(stats, confidence):
    stats = np.array([v for v in stats if not math.isnan(v)])
    lo, hi = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def ref_loc_bootstrap(runs_a, runs_b, runs_c, t, n_boot, seed, confidence=0.95):
    """Replicate statistics of class-mean acc(A) - acc(B) (runs_b None: acc(A) alone), by loops."""
    rng = np.random.default_rng(seed)
    width, positions = ref_slots(rng, len(runs_a), n_boot)
    slot_value = {}
    for s in range(len(runs_a)):
        cls = [int(v) for v in runs_c[s]]
        draws = {}
        for c in sorted(set(cls)):
            members = [i for i in range(len(cls)) if cls[i] == c]
            draws[c] = (members, rng.random((len(positions[s]), len(members))))
        for p, pos in enumerate(positions[s]):
            per_class = []
            for c in sorted(draws):
                members, u = draws[c]
                n = len(members)
                picks = [members[ref_index(u[p, j], n)] for j in range(n)]
                acc_a = sum(1 for i in picks if runs_a[s][i] > t) / n
                acc_b = 0.0 if runs_b is None else sum(1 for i in picks if runs_b[s][i] > t) / n
                per_class.append(acc_a - acc_b)
            slot_value[pos] = sum(per_class) / len(per_class)
    stats = [sum(slot_value[(b, k)] for k in range(width)) / width for b in range(n_boot)]
    return ref_quantiles(stats, confidence)


def ref_mean_auc(scores, labels):
    aucs = [pairwise_auc(scores[:, k], labels[:, k]) for k in range(labels.shape[1])]
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def ref_auc_bootstrap(runs_a, runs_b, runs_y, n_boot, seed, confidence=0.95):
    rng = np.random.default_rng(seed)
    width, positions = ref_slots(rng, len(runs_a), n_boot)
    slot_value = {}
    for s in range(len(runs_a)):
        n = runs_y[s].shape[0]
        u = rng.random((len(positions[s]), n))
        for p, pos in enumerate(positions[s]):
            rows = [ref_index(u[p, j], n) for j in range(n)]
            y = runs_y[s][rows]
            a = ref_mean_auc(runs_a[s][rows], y)
            b = 0.0 if runs_b is None else ref_mean_auc(runs_b[s][rows], y)
            slot_value[pos] = a - b
    stats = [sum(slot_value[(b, k)] for k in range(width)) / width for b in range(n_boot)]
    return ref_quantiles(stats, confidence)


def random_loc_run(rng, n, n_classes=4):
    classes = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    rng.shuffle(classes)
    ious_a = np.round(rng.random(n), 1)  # ties with the threshold (IoU == T is a miss)
    ious_b = np.round(rng.random(n) * 0.8, 1)
    return ious_a, ious_b, classes


def random_auc_run(rng, n, n_classes=3):
    labels = (rng.random((n, n_classes)) > 0.6).astype(int)
    labels[0, :], labels[1, :] = 1, 0  # every class has both values in the full run
    scores_a = np.round(rng.random((n, n_classes)) + 0.3 * labels, 1)  # ties
    scores_b = np.round(rng.random((n, n_classes)), 1)
    return scores_a, scores_b, labels


# ---------------------------------------------------------------------------------------------- localization
def test_localization_difference_point_estimates_exact():
    rng = np.random.default_rng(0)
    runs = [random_loc_run(rng, n) for n in (40, 25, 33)]
    ia, ib, ic = (list(x) for x in zip(*runs))
    res = bootstrap_localization_difference(ia, ib, ic, threshold=0.5, n_boot=50, seed=1)
    acc_a = [ref_class_mean_acc(a, c, 0.5) for a, c in zip(ia, ic)]
    acc_b = [ref_class_mean_acc(b, c, 0.5) for b, c in zip(ib, ic)]
    assert res["a"] == float(np.mean(acc_a)) and res["b"] == float(np.mean(acc_b))
    assert res["diff"] == float(np.mean([x - y for x, y in zip(acc_a, acc_b)]))
    assert res["std_a"] == float(np.std(acc_a)) and res["std_b"] == float(np.std(acc_b))
    assert res["n_boxes"] == 98 and res["n_seeds"] == 3 and res["n_boot"] == 50
    assert res["threshold"] == 0.5 and res["confidence"] == 0.95
    assert set(res) == {
        "diff",
        "low",
        "high",
        "a",
        "b",
        "std_a",
        "std_b",
        "n_boxes",
        "n_seeds",
        "n_boot",
        "threshold",
        "confidence",
    }


@pytest.mark.parametrize("n_runs", [1, 3])
def test_localization_difference_bootstrap_matches_loop_reference(n_runs):
    rng = np.random.default_rng(10 + n_runs)
    runs = [random_loc_run(rng, n) for n in (30, 21, 26)[:n_runs]]
    ia, ib, ic = (list(x) for x in zip(*runs))
    res = bootstrap_localization_difference(ia, ib, ic, threshold=0.4, n_boot=120, seed=7, confidence=0.9)
    lo, hi = ref_loc_bootstrap(ia, ib, ic, 0.4, 120, 7, confidence=0.9)
    assert res["low"] == pytest.approx(lo, abs=1e-12) and res["high"] == pytest.approx(hi, abs=1e-12)
    assert res["low"] <= res["diff"] <= res["high"]


def test_localization_bootstrap_independent_of_row_blocks(monkeypatch):
    rng = np.random.default_rng(2)
    runs = [random_loc_run(rng, n) for n in (30, 21)]
    ia, ib, ic = (list(x) for x in zip(*runs))
    full = bootstrap_localization_difference(ia, ib, ic, n_boot=101, seed=3)
    monkeypatch.setattr(bootstrap, "_CHUNK_ELEMENTS", 7)  # many small row blocks
    assert bootstrap_localization_difference(ia, ib, ic, n_boot=101, seed=3) == full


def test_localization_difference_identical_and_perfect():
    rng = np.random.default_rng(3)
    ious, _, cls = random_loc_run(rng, 50)
    same = bootstrap_localization_difference(ious, ious.copy(), cls, n_boot=200)
    assert same["diff"] == 0.0 and same["low"] == 0.0 and same["high"] == 0.0
    best = bootstrap_localization_difference(np.ones(50), np.zeros(50), cls, n_boot=200)
    assert best["diff"] == 1.0 and best["low"] > 0 and best["low"] == best["high"] == 1.0
    assert best["a"] == 1.0 and best["b"] == 0.0
    worst = bootstrap_localization_difference([np.zeros(50)] * 2, [np.ones(50)] * 2, [cls] * 2, n_boot=200)
    assert worst["diff"] == -1.0 and worst["high"] < 0


def test_localization_single_seed_list_equals_array_and_stacked_runs():
    rng = np.random.default_rng(4)
    a, b, c = random_loc_run(rng, 40)
    plain = bootstrap_localization_difference(a, b, c, n_boot=300, seed=5)
    assert bootstrap_localization_difference([a], [b], [c], n_boot=300, seed=5) == plain
    assert bootstrap_localization_difference(list(a), list(b), list(c), n_boot=300, seed=5) == plain
    assert bootstrap_localization_difference(torch.tensor(a), b, c, n_boot=300, seed=5) == plain
    a2, b2, c2 = random_loc_run(rng, 40)
    listed = bootstrap_localization_difference([a, a2], [b, b2], [c, c2], n_boot=300, seed=5)
    stacked = bootstrap_localization_difference(
        np.stack([a, a2]), np.stack([b, b2]), np.stack([c, c2]), n_boot=300, seed=5
    )
    assert listed == stacked


def test_localization_deterministic_and_seed_dependent():
    rng = np.random.default_rng(5)
    a, b, c = random_loc_run(rng, 60)
    r1 = bootstrap_localization_difference(a, b, c, n_boot=300, seed=11)
    assert bootstrap_localization_difference(a, b, c, n_boot=300, seed=11) == r1
    r2 = bootstrap_localization_difference(a, b, c, n_boot=300, seed=12)
    assert r2["diff"] == r1["diff"] and (r2["low"], r2["high"]) != (r1["low"], r1["high"])


def test_localization_ci_matches_accuracy_and_difference_with_null_model():
    rng = np.random.default_rng(6)
    ious = rng.random(64)
    cls = np.arange(64) % 8  # all 8 box classes present
    res = localization_ci(ious, cls, threshold=0.3, n_boot=150, seed=2)
    assert set(res) == {"value", "low", "high"}
    assert res["value"] == accuracy_from_ious(ious, cls, thresholds=(0.3,))["0.3"]["Mean"]
    # B that never finds anything: same draws, same replicates.
    diff = bootstrap_localization_difference(ious, np.zeros(64), cls, threshold=0.3, n_boot=150, seed=2)
    assert (res["value"], res["low"], res["high"]) == (diff["diff"], diff["low"], diff["high"])
    lo, hi = ref_loc_bootstrap([ious], None, [cls], 0.3, 150, 2)
    assert res["low"] == pytest.approx(lo, abs=1e-12) and res["high"] == pytest.approx(hi, abs=1e-12)


def test_localization_null_coverage_roughly_nominal():
    """A and B with the same per-class hit rates: 0 lies outside the 95% interval in roughly 5% of cases."""
    rng = np.random.default_rng(7)
    p = np.array([0.2, 0.5, 0.7])
    cls = np.repeat(np.arange(3), 40)
    misses = 0
    n_sims = 150
    for k in range(n_sims):
        a = (rng.random(cls.size) < p[cls]).astype(float)
        b = (rng.random(cls.size) < p[cls]).astype(float)
        res = bootstrap_localization_difference(a, b, cls, threshold=0.5, n_boot=300, seed=k)
        misses += not (res["low"] <= 0.0 <= res["high"])
    assert 0.0 <= misses / n_sims <= 0.13


def test_localization_bad_inputs():
    a, c = np.full(5, 0.6), np.arange(5) % 2
    with pytest.raises(ValueError, match="seed 0: A has 5 boxes, B has 4"):
        bootstrap_localization_difference(a, a[:4], c)
    with pytest.raises(ValueError, match="seed counts differ"):
        bootstrap_localization_difference([a, a], [a], [c, c])
    with pytest.raises(ValueError, match="5 IoUs for 4 class"):
        bootstrap_localization_difference(a, a, c[:4])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_localization_difference(np.r_[a[:4], np.nan], a, c)
    with pytest.raises(ValueError, match="confidence"):
        localization_ci(a, c, confidence=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        localization_ci(a, c, n_boot=0)
    with pytest.raises(ValueError, match="no boxes"):
        localization_ci(np.zeros(0), np.zeros(0, dtype=int))


# ---------------------------------------------------------------------------------------------- AUC
def test_auc_difference_point_estimates_exact_and_bootstrap_reference():
    rng = np.random.default_rng(20)
    runs = [random_auc_run(rng, n) for n in (14, 11)]
    sa, sb, y = (list(x) for x in zip(*runs))
    res = bootstrap_auc_difference(sa, sb, y, n_boot=60, seed=4)
    auc_a = [ref_mean_auc(s, labels) for s, labels in zip(sa, y)]
    auc_b = [ref_mean_auc(s, labels) for s, labels in zip(sb, y)]
    assert res["a"] == float(np.mean(auc_a)) and res["b"] == float(np.mean(auc_b))
    assert res["diff"] == float(np.mean([x - z for x, z in zip(auc_a, auc_b)]))
    assert res["std_a"] == float(np.std(auc_a)) and res["std_b"] == float(np.std(auc_b))
    assert res["n_images"] == 25 and res["n_seeds"] == 2 and res["n_boot"] == 60
    assert set(res) == {
        "diff",
        "low",
        "high",
        "a",
        "b",
        "std_a",
        "std_b",
        "n_images",
        "n_seeds",
        "n_boot",
        "confidence",
    }
    lo, hi = ref_auc_bootstrap(sa, sb, y, 60, 4)
    assert res["low"] == pytest.approx(lo, abs=1e-12) and res["high"] == pytest.approx(hi, abs=1e-12)


def test_auc_single_run_bootstrap_reference_with_rare_class(monkeypatch):
    """A rare class is single-valued in some replicates: left out of those replicates' means."""
    rng = np.random.default_rng(21)
    sa, sb, y = random_auc_run(rng, 12)
    y[:, 2] = 0
    y[3, 2] = 1  # one positive: absent from about a third of the replicates
    res = bootstrap_auc_difference(sa, sb, y, n_boot=80, seed=9)
    lo, hi = ref_auc_bootstrap([sa], [sb], [y], 80, 9)
    assert res["low"] == pytest.approx(lo, abs=1e-12) and res["high"] == pytest.approx(hi, abs=1e-12)
    monkeypatch.setattr(bootstrap, "_CHUNK_ELEMENTS", 5)
    assert bootstrap_auc_difference(sa, sb, y, n_boot=80, seed=9) == res


def test_auc_point_matches_auc_per_class_and_skips_single_valued_class():
    rng = np.random.default_rng(22)
    n = 50
    labels = (rng.random((n, 14)) > 0.7).astype(int)
    labels[:, 13] = 0
    scores = np.round(rng.random((n, 14)), 2)
    with pytest.warns(UserWarning):
        expected = auc_per_class(scores, labels)["Mean"]
    res = auc_ci(scores, labels, n_boot=100, seed=1)
    assert set(res) == {"value", "low", "high"}
    assert res["value"] == pytest.approx(expected, abs=1e-12)
    assert res["value"] == ref_mean_auc(scores, labels)
    assert res["low"] <= res["value"] <= res["high"]


def test_auc_ci_bootstrap_reference():
    rng = np.random.default_rng(23)
    scores, _, labels = random_auc_run(rng, 13)
    res = auc_ci(scores, labels, n_boot=70, seed=3, confidence=0.8)
    lo, hi = ref_auc_bootstrap([scores], None, [labels], 70, 3, confidence=0.8)
    assert res["low"] == pytest.approx(lo, abs=1e-12) and res["high"] == pytest.approx(hi, abs=1e-12)


def test_auc_difference_identical_perfect_and_single_seed_list():
    rng = np.random.default_rng(24)
    labels = (rng.random((40, 4)) > 0.5).astype(int)
    labels[0], labels[1] = 1, 0
    scores = rng.random((40, 4))
    same = bootstrap_auc_difference(scores, scores.copy(), labels, n_boot=200)
    assert same["diff"] == 0.0 and same["low"] == 0.0 and same["high"] == 0.0
    perfect, inverted = labels + 0.1 * scores, -(labels + 0.1 * scores)
    best = bootstrap_auc_difference(perfect, inverted, labels, n_boot=200)
    assert best["a"] == 1.0 and best["b"] == 0.0 and best["diff"] == 1.0 and best["low"] > 0
    plain = bootstrap_auc_difference(perfect, scores, labels, n_boot=200, seed=3)
    assert bootstrap_auc_difference([perfect], [scores], [labels], n_boot=200, seed=3) == plain
    assert plain["low"] <= plain["diff"] <= plain["high"]


def test_auc_bad_inputs():
    s, y = np.zeros((6, 3)), np.tile([[0, 1, 0]], (6, 1))
    with pytest.raises(ValueError, match="differ in shape"):
        bootstrap_auc_difference(s, s[:5], y)
    with pytest.raises(ValueError, match="seed counts differ"):
        bootstrap_auc_difference([s, s], [s, s], [y])
    with pytest.raises(ValueError, match="no class has both label values"):
        auc_ci(s, y)


# ---------------------------------------------------------------------------------------------- verdict
def test_verdict_follows_the_interval():
    base = {"n_seeds": 3, "n_boot": 2000, "confidence": 0.95, "threshold": 0.5}
    win = verdict(base | {"diff": 0.0524, "low": 0.0131, "high": 0.0912})
    assert "CIA-Net beats Base" in win and "+0.052" in win and "[+0.013, +0.091]" in win and "T(IoU) = 0.5" in win
    lose = verdict(base | {"diff": -0.1, "low": -0.2, "high": -0.0001}, what="A", other="B", metric="AUC")
    assert lose.startswith("A loses to B on AUC") and "[-0.200, -0.000]" in lose
    for low, high in ((-0.01, 0.03), (0.0, 0.02), (-0.02, 0.0)):
        text = verdict(base | {"diff": 0.01, "low": low, "high": high})
        assert text.startswith("No significant difference") and "beats" not in text and "loses" not in text
    assert verdict({"diff": 0.0, "low": None, "high": None}).startswith("No significant difference")
    auc = verdict({"diff": 0.02, "low": 0.01, "high": 0.03, "n_images": 10})
    assert "on mean AUC" in auc
    with pytest.raises(ValueError, match="'low'"):
        verdict({"diff": 0.1, "high": 0.2})


def test_verdict_on_real_results():
    cls = np.arange(40) % 4
    res = bootstrap_localization_difference(np.ones(40), np.zeros(40), cls, n_boot=100)
    assert "beats" in verdict(res) and "+1.000" in verdict(res)
    res = bootstrap_localization_difference(np.zeros(40), np.zeros(40), cls, n_boot=100)
    assert verdict(res).startswith("No significant difference")


# ---------------------------------------------------------------------------------------------- attention
def ref_attention(delta, boxes, image_size):
    """Loops over cells: a cell is in a finding when its rectangle overlaps a box with positive area."""
    W, H = image_size
    n, gh, gw = delta.shape
    hits, masses, shares = [], [], []
    for k in range(n):
        if boxes[k] is None or len(boxes[k]) == 0:
            continue
        inside = [[False] * gw for _ in range(gh)]
        for x, y, w, h in boxes[k]:
            for i in range(gh):
                for j in range(gw):
                    ox = min(x + w, (j + 1) * W / gw) - max(x, j * W / gw)
                    oy = min(y + h, (i + 1) * H / gh) - max(y, i * H / gh)
                    if ox > 0 and oy > 0:
                        inside[i][j] = True
        best, arg = -1.0, None
        for i in range(gh):
            for j in range(gw):
                if delta[k, i, j] > best:
                    best, arg = float(delta[k, i, j]), (i, j)
        hits.append(1.0 if inside[arg[0]][arg[1]] else 0.0)
        total = sum(float(delta[k, i, j]) for i in range(gh) for j in range(gw))
        in_box = sum(float(delta[k, i, j]) for i in range(gh) for j in range(gw) if inside[i][j])
        if total > 0:
            masses.append(in_box / total)
        shares.append(sum(inside[i][j] for i in range(gh) for j in range(gw)) / (gh * gw))
    mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
    return mean(hits), mean(masses), mean(shares), len(hits)


def test_attention_hand_built():
    # 64 x 64 image, 4 x 4 grid of 16 px cells; the box covers cells (1, 1) and (1, 2).
    delta = np.ones((3, 4, 4))
    delta[0, 1, 1] = 5.0
    delta[1, 3, 3] = 5.0  # peak outside the box
    boxes = [[(16, 16, 32, 16)], np.array([[16.0, 16.0, 32.0, 16.0]]), []]
    res = attention_in_boxes(delta, boxes, (64, 64))
    assert res["n_images"] == 2  # the third image has no box
    assert res["hit_rate"] == 0.5
    assert res["mass_in_boxes"] == pytest.approx(((5 + 1) / 20 + 2 / 20) / 2)
    assert res["area_share"] == 2 / 16
    one = attention_in_boxes(delta[:1], boxes[:1], (64, 64))
    assert one == {"hit_rate": 1.0, "mass_in_boxes": pytest.approx(0.3), "area_share": 0.125, "n_images": 1}


def test_attention_ties_borders_and_degenerate_maps():
    flat = np.full((1, 4, 4), 2.0)  # all tied: the argmax is cell (0, 0)
    assert attention_in_boxes(flat, [[(0, 0, 16, 16)]], (64, 64))["hit_rate"] == 1.0
    # A box ending exactly on a cell border does not mark the next cell: (0, 0) only -> miss at cell (0, 1).
    peak = np.zeros((1, 4, 4))
    peak[0, 0, 1] = 1.0
    res = attention_in_boxes(peak, [[(0, 0, 16, 16)]], (64, 64))
    assert res["hit_rate"] == 0.0 and res["mass_in_boxes"] == 0.0 and res["area_share"] == 1 / 16
    # All-zero attention: counted for hits and area, no mass share.
    zero = attention_in_boxes(np.zeros((1, 4, 4)), [[(0, 0, 64, 64)]], (64, 64))
    assert zero == {"hit_rate": 1.0, "mass_in_boxes": None, "area_share": 1.0, "n_images": 1}
    empty = attention_in_boxes(np.ones((2, 4, 4)), [None, []], (64, 64))
    assert empty == {"hit_rate": None, "mass_in_boxes": None, "area_share": None, "n_images": 0}


def test_attention_random_matches_loop_reference():
    rng = np.random.default_rng(30)
    W, H = 96, 64
    for gh, gw in ((4, 6), (8, 12), (16, 16)):
        delta = rng.random((12, gh, gw)) ** 4
        delta[2] = np.round(delta[2], 1)  # ties
        boxes = []
        for _k in range(12):
            count = int(rng.integers(0, 3))
            boxes.append(
                [
                    (
                        int(rng.integers(-8, W)),
                        int(rng.integers(-8, H)),
                        int(rng.integers(0, 40)),
                        int(rng.integers(0, 30)),
                    )
                    for _ in range(count)
                ]
            )
        got = attention_in_boxes(torch.tensor(delta, dtype=torch.float64), boxes, (W, H))
        hit, mass, share, n = ref_attention(delta, boxes, (W, H))
        assert got["n_images"] == n and got["hit_rate"] == hit
        assert got["mass_in_boxes"] == pytest.approx(mass, abs=1e-12)
        assert got["area_share"] == pytest.approx(share, abs=1e-12)


def test_attention_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        attention_in_boxes(np.ones((4, 4)), [[(0, 0, 1, 1)]], (4, 4))
    with pytest.raises(ValueError, match="2 attention maps for 1 box lists"):
        attention_in_boxes(np.ones((2, 4, 4)), [[(0, 0, 1, 1)]], (4, 4))
    with pytest.raises(ValueError, match="non-negative"):
        attention_in_boxes(-np.ones((1, 4, 4)), [[(0, 0, 1, 1)]], (4, 4))
    with pytest.raises(ValueError, match=r"\(k, 4\)"):
        attention_in_boxes(np.ones((1, 4, 4)), [[(0, 0, 1)]], (4, 4))

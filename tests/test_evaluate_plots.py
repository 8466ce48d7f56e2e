"""`cianet evaluate`'s plots (ROC, PR, localization vs T(IoU), loss curve), bootstrap intervals in metrics.json,
and an evaluated run in `cianet view`."""

from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size


def test_loss_series_places_steps_within_their_epoch():
    from cianet.evaluation.plots import loss_series

    records = [
        {"event": "step", "epoch": 0, "step": 0, "loss": 2.0},
        {"event": "step", "epoch": 0, "step": 20, "loss": 1.5},
        {"event": "step", "epoch": 0, "step": 40, "loss": 1.0},
        {"event": "epoch", "epoch": 0, "train_loss": 1.4, "val_auc_mean": 0.6},
        {"event": "step", "epoch": 1, "step": 0, "loss": 0.9},
        {"event": "step", "epoch": 1, "step": 20, "loss": 0.8},
        {"event": "epoch", "epoch": 1, "train_loss": 0.85},
        {"event": "final", "weights": "last"},
    ]
    s = loss_series(records)
    assert s["step"][0] == pytest.approx([0.0, 20 / 41, 40 / 41, 1.0, 1 + 20 / 21])
    assert s["step"][1] == [2.0, 1.5, 1.0, 0.9, 0.8]
    assert s["epoch"] == ([1, 2], [1.4, 0.85]) and s["val_auc"] == ([1], [0.6])


@pytest.mark.slow  # matplotlib, scikit-learn and four figures (~4 s, mostly importing the two)
def test_figures_are_pngs_and_skip_what_cannot_be_drawn(tmp_path):
    from cianet.evaluation.plots import localization_figure, loss_figure, pr_figure, roc_figure

    rng = np.random.default_rng(0)
    labels = (rng.random((40, 3)) < 0.4).astype(float)
    labels[:, 2] = 0  # a class without positives has no curve
    scores = np.clip(labels * 0.4 + rng.random((40, 3)) * 0.6, 0, 1)
    for fig in (roc_figure(scores, labels, ["a", "b", "c"]), pr_figure(scores, labels, ["a", "b", "c"])):
        assert min(png_size(fig)) > 200
    assert roc_figure(scores[:, 2:], labels[:, 2:], ["c"]) is None
    loc = {"0.1": {"Mass": 0.8, "Nodule": None, "Mean": 0.8}, "0.5": {"Mass": 0.4, "Nodule": None, "Mean": 0.4}}
    assert min(png_size(localization_figure(loc))) > 200
    assert loss_figure(tmp_path / "absent.jsonl") is None
    (tmp_path / "log.jsonl").write_text('{"event": "step", "epoch": 0, "step": 0, "loss": 1.0}\n{"torn')
    assert min(png_size(loss_figure(tmp_path / "log.jsonl"))) > 200


def test_metrics_markdown_lists_intervals_and_plots():
    from cianet.run.scoring import metrics_markdown

    m = {
        "localization": {"0.5": {"Mass": 0.5, "Mean": 0.5}},
        "auc": {"Mass": 0.7, "Mean": 0.7},
        "n_images": 3,
        "n_boxes": 2,
        "ci": {
            "n_boot": 100,
            "confidence": 0.9,
            "auc": {"value": 0.7, "low": 0.6, "high": None},
            "localization": {"0.5": {"value": 0.5, "low": 0.25, "high": 0.75}},
        },
        "plots": {"roc": "roc.png", "loss": "loss.png"},
    }
    md = metrics_markdown(m)
    assert "90% intervals from 100 bootstrap resamples" in md
    assert "mean AUC: 0.700 n/a" in md and "T(IoU) = 0.5: 0.500 [0.250, 0.750]" in md
    assert "![ROC per class](roc.png)" in md and "![Training loss](loss.png)" in md


@pytest.mark.slow  # evaluates the session's tiny trained run and builds its page
def test_evaluate_writes_plots_and_intervals_and_view_shows_them(trained_run, tmp_path, capsys):
    from cianet.cli import main
    from cianet.metrics import auc_per_class
    from cianet.run.scoring import read_predictions

    run = shutil.copytree(trained_run, tmp_path / "run")  # evaluate writes into the run: a copy of the shared one
    capsys.readouterr()
    assert (
        main(["evaluate", "--run", str(run), "--device", "cpu", "--no-progress", "--json", "--bootstrap", "300"]) == 0
    )
    printed = json.loads(capsys.readouterr().out)
    m = json.loads((run / "metrics.json").read_text())
    assert printed["ci"] == m["ci"] and m["ci"]["n_boot"] == 300
    # The interval's point value is the metric computed by the scorer (two implementations agree).
    assert m["ci"]["auc"]["value"] == pytest.approx(m["auc"]["Mean"])
    assert m["ci"]["auc"]["low"] <= m["ci"]["auc"]["value"] <= m["ci"]["auc"]["high"]
    for t, r in m["ci"]["localization"].items():
        assert r["value"] == pytest.approx(m["localization"][t]["Mean"]) and r["low"] <= r["value"] <= r["high"]
    assert m["plots"] == {"roc": "roc.png", "pr": "pr.png", "localization": "localization.png", "loss": "loss.png"}
    for f in m["plots"].values():
        assert min(png_size((run / f).read_bytes())) > 200
    md = (run / "metrics.md").read_text()
    assert all(f"]({f})" in md for f in m["plots"].values()) and "Bootstrap confidence intervals" in md
    pred = read_predictions(run)
    assert len(pred["names"]) == m["n_images"] == len(pred["scores"]) and len(pred["box_names"]) == m["n_boxes"]
    # AUCs rank by the evidence (float64, no ties), the scores' monotone, unsaturated form
    assert auc_per_class(pred["evidence"], pred["labels"])["Mean"] == pytest.approx(m["auc"]["Mean"])
    assert pred["evidence"].dtype == np.float64 and np.all(np.diff(np.sort(pred["evidence"], axis=0), axis=0) > 0)
    assert m["ci"]["pointing"]["value"] == pytest.approx(m["pointing_game"]["Mean"])
    assert m["val_threshold"]["threshold"] is None and "no validation split" in m["val_threshold"]["reason"]

    site = tmp_path / "site"
    assert main(["view", str(run), "--out", str(site), "--no-progress"]) == 0
    assert "3 tables, 4 plots" in capsys.readouterr().out
    text = (site / "index.html").read_text()
    data = json.loads(re.search(r'id="cianet-data">(.*?)</script>', text, re.S).group(1).replace("<\\/", "</"))
    assert len(data["items"]) == m["n_images"]
    by_name = dict(zip(pred["names"].tolist(), pred["labels"]))
    from cianet.labels import LABELS

    for it in data["items"]:  # the truth shown is the labels the run was scored against
        assert sorted(it["truth"]["labels"]) == sorted(LABELS[k] for k in np.nonzero(by_name[it["name"]])[0])
    boxed = [it for it in data["items"] if it["truth"]["boxes"]]
    assert boxed and data["items"][: len(boxed)] == boxed  # images with boxes first
    ious = sorted(b["iou"] for it in boxed for b in it["truth"]["boxes"] if "iou" in b)
    assert ious == pytest.approx(sorted(pred["ious"].tolist()))
    for kind in ("roc", "pr", "localization", "loss"):
        assert f'data-kind="{kind}"' in text


def test_bootstrap_intervals_match_the_metrics_and_skip_undefined_ones():
    from cianet.evaluation.evaluate import bootstrap_intervals
    from cianet.metrics import accuracy_from_ious, auc_per_class

    rng = np.random.default_rng(3)
    labels = (rng.random((30, 3)) < 0.4).astype(float)
    scores = np.clip(0.5 * labels + 0.7 * rng.random((30, 3)), 0, 1)
    ious, classes = rng.random(12), np.repeat([0, 1, 2], 4)
    names = ["a", "b", "c"]
    m = {
        "scores": scores,
        "labels": labels,
        "ious": ious,
        "box_classes": classes,
        "auc": auc_per_class(scores, labels, names),
        "localization": accuracy_from_ious(ious, classes, (0.1, 0.5), class_names=names),
    }
    ci = bootstrap_intervals(m, n_boot=200, seed=1)
    assert ci["auc"]["value"] == pytest.approx(m["auc"]["Mean"]) and ci["auc"]["low"] < ci["auc"]["high"]
    for t in ("0.1", "0.5"):
        assert ci["localization"][t]["value"] == pytest.approx(m["localization"][t]["Mean"])
    with pytest.warns(UserWarning):
        m0 = dict(
            m,
            labels=np.zeros_like(labels),
            auc=auc_per_class(scores, np.zeros_like(labels), names),
            ious=np.zeros(0),
            box_classes=np.zeros(0, int),
        )
    assert bootstrap_intervals(m0, n_boot=50) == {"n_boot": 50, "confidence": 0.95, "auc": None, "localization": {}}

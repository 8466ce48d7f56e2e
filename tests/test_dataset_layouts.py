"""The phantom written in the RSNA, VinDr-CXR and generic CSV layouts (``cianet synth --layout``): what each
adapter reads back, DICOM included, and a whole run (train, evaluate, bundle, predict) on each layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cianet.cli import main
from cianet.data.layouts import open_index
from helpers import NARROW


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


def test_vindr_phantom_has_three_readers_per_finding_and_dicoms_of_the_phantom_pixels(tmp_path):
    from cianet.data.io import load_xray
    from cianet.phantom.layouts import write_layout

    args = {"n_images": 16, "size": 32, "workers": 1, "progress": False, "seed": 5}
    summary = write_layout(tmp_path / "v", "vindr", **args)
    write_layout(tmp_path / "c", "csv", **args)  # the same phantom with its PNGs
    index = open_index(tmp_path / "v")
    s = index.summary()
    assert index.dataset == "vindr" and s["missing_files"] == 0 and s["images"] == summary["layout"]["images"]
    assert s["reader_boxes"] == 3 * s["boxes"] > 0  # each finding: three jittered readers' boxes, merged into one
    assert all(b.readers == 3 for r in index for b in r.boxes)
    assert s["no_finding"] == sum(1 for r in open_index(tmp_path / "c") if r.no_finding)
    rows = list(csv.DictReader(open(tmp_path / "v" / "train.csv")))
    assert {r["rad_id"] for r in rows} <= {f"R{i}" for i in range(1, 7)}
    for rec in list(index)[:5]:
        assert rec.path.suffix == ".dicom"
        png = tmp_path / "c" / "images" / f"{Path(rec.name).stem}.png"
        np.testing.assert_allclose(load_xray(rec.path), _minmax(load_xray(png)), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("layout, n_classes", [("rsna", 1), ("vindr", 14), ("csv", None)])
def test_a_whole_run_on_each_layout(tmp_path, capsys, layout, n_classes, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # the evaluation's plots (test_evaluate_plots' subject, the same whatever the layout) are not drawn here
    monkeypatch.setattr("cianet.evaluation.evaluate.write_evaluation_plots", lambda *a, **k: {})
    root, run = tmp_path / "data", tmp_path / "run"
    assert (
        main(
            [
                "synth",
                str(root),
                "--layout",
                layout,
                "--n-images",
                "24",
                "--size",
                "32",  # what each adapter reads and the run's classes and files are checked: the cheapest phantom
                "--workers",
                "1",
                "--annotated-share",
                "0.6",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    capsys.readouterr()
    index = open_index(root)
    assert index.dataset == layout and index.summary()["missing_files"] == 0 and index.annotated_names()
    classes = index.label_set
    if n_classes is not None:
        assert len(classes) == n_classes
    assert (
        main(
            [
                "train",
                "--config",
                "tiny",
                *NARROW,
                "--data-root",
                str(root),
                "--image-size",
                "32",  # the run's classes and files are checked, not its scores: the cheapest input size
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--out",
                str(run),
                "--no-progress",
                "--set",
                "model.test_upsample=16",
                "--set",
                "model.head_channels=16",
                "--set",
                "run.threads=1",
                "--set",
                "protocol.unannotated_ratio=0.5",
            ]
        )
        == 0
    )
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["labels"] == list(classes.names) and ckpt["box_labels"] == list(classes.box_names)
    assert ckpt["model"]["head.cls.bias"].shape == (len(classes),)  # one output channel per class
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["auc"]) == [*classes.names, "Mean"]
    assert list(metrics["localization"]["0.5"]) == [*classes.box_names, "Mean"]
    assert metrics["n_boxes"] > 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--no-progress", "--bootstrap", "0"]) == 0
    assert list(json.loads((run / "metrics.json").read_text())["auc"]) == [*classes.names, "Mean"]
    if layout != "vindr":
        return
    other = tmp_path / "rsna"  # a run's classes are its data set's: evaluating it on RSNA is refused
    assert main(["synth", str(other), "--layout", "rsna", "--n-images", "12", "--size", "32", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data-root", str(other), "--no-progress"]) == 2
    assert "differ from those of the data root" in capsys.readouterr().err
    bundle = tmp_path / "m.cianet"
    assert main(["bundle", "--run", str(run), "--out", str(bundle)]) == 0
    dicom = index.records[0].path
    assert main(["predict", "--model", str(bundle), "--out", str(tmp_path / "pred"), "--no-progress", str(dicom)]) == 0
    header = next(csv.reader(open(tmp_path / "pred" / "predictions.csv")))
    assert set(classes.names) <= set(header)

"""Cross-data-set evaluation (``cianet evaluate --run R --data-root D --out DIR [--dataset] [--label-map nih]``):
the matching of a model's classes with another data set's, the metrics restricted to them, the negatives,
and the whole command on the phantom (NIH layout for training, VinDr-CXR layout for testing)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cianet.cli import main
from cianet.data.index import Box, ImageIndex, ImageRecord
from cianet.data.label_maps import map_index, match_classes
from cianet.data.vindr import VINDR_LABEL_SET
from cianet.labels import NIH_LABEL_SET
from helpers import NARROW, pairwise_auc


def _vindr_index(tmp_path: Path) -> ImageIndex:
    recs = [
        ImageRecord("a.dicom", "a", ("Nodule/Mass",), [Box("Nodule/Mass", 1, 2, 3, 4, readers=3)]),
        ImageRecord(
            "b.dicom",
            "b",
            ("Consolidation", "Pleural effusion"),
            [Box("Consolidation", 5, 5, 5, 5), Box("Pleural effusion", 0, 0, 9, 9)],
        ),
        ImageRecord("c.dicom", "c", ("Lung Opacity",), [Box("Lung Opacity", 1, 1, 2, 2)]),
        ImageRecord("d.dicom", "d", ()),
    ]
    return ImageIndex(tmp_path, recs, label_set=VINDR_LABEL_SET, dataset="vindr")


def test_an_nih_model_meets_vindr_classes_through_the_nih_map(tmp_path):
    index, match = match_classes(map_index(_vindr_index(tmp_path), "nih"), NIH_LABEL_SET)
    # the NIH classes some VinDr-CXR class maps to, in the model's order; the others are left out, not scored
    assert match.scored == (
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pneumothorax",
        "Consolidation",
        "Fibrosis",
        "Pleural_Thickening",
    )
    assert match.left_out == ("Pneumonia", "Edema", "Emphysema", "Hernia")
    assert set(match.scored) | set(match.left_out) == set(NIH_LABEL_SET.names)
    assert match.not_in_model == ("Aortic enlargement", "Calcification", "ILD", "Lung Opacity", "Other lesion")
    assert match.boxes_dropped == {"Consolidation": 1}  # NIH's Consolidation has no box channel
    assert index.label_set == NIH_LABEL_SET
    a, b, c, d = index.records
    assert a.labels == ("Mass", "Nodule") and [x.label for x in a.boxes] == ["Mass", "Nodule"]
    assert a.boxes[0].xywh() == (1, 2, 3, 4) and a.boxes[0].readers == 3
    assert b.labels == ("Effusion", "Consolidation") and [x.label for x in b.boxes] == ["Effusion"]
    assert c.labels == () and c.boxes == [] and not c.no_finding  # only an unmapped finding: not a negative
    assert d.no_finding
    assert index.facts["class_match"]["left_out"] == list(match.left_out)


def test_matching_by_name_and_its_errors(tmp_path):
    vindr = _vindr_index(tmp_path)
    same, match = match_classes(vindr, VINDR_LABEL_SET)  # a VinDr-CXR model on VinDr-CXR: everything
    assert match.scored == VINDR_LABEL_SET.names and match.left_out == () and match.not_in_model == ()
    assert [r.labels for r in same] == [r.labels for r in vindr]
    # VinDr-CXR and NIH share five class names by chance: no match without the declared map
    with pytest.raises(
        ValueError,
        match=r"the model's classes \(Effusion, Mass, Nodule, Pneumonia\.\.\.\) are not "
        "those of the vindr data set .*: map the data set's classes with --label-map nih",
    ):
        match_classes(vindr, NIH_LABEL_SET)
    from cianet.labels import LabelSet

    rsna_model = LabelSet("rsna", ("Pneumonia",), 1)
    with pytest.raises(ValueError, match="cianet declares no map between these classes"):
        match_classes(vindr, rsna_model)
    nih = ImageIndex(tmp_path, [ImageRecord("n.png", "n", ("Pneumonia",), [Box("Pneumonia", 1, 1, 4, 4)])])
    _, on_nih = match_classes(nih, rsna_model)  # RSNA's one class is NIH's Pneumonia by name
    assert on_nih.scored == ("Pneumonia",) and len(on_nih.not_in_model) == 13
    csv_index = ImageIndex(
        tmp_path, [ImageRecord("x.png", "x", ("Mass",))], dataset="csv", label_set=LabelSet("csv", ("Mass", "Scar"), 1)
    )
    _, on_csv = match_classes(csv_index, NIH_LABEL_SET)  # a csv data set's names are taken as they are
    assert on_csv.scored == ("Mass",) and on_csv.not_in_model == ("Scar",) and "Hernia" in on_csv.left_out
    with pytest.raises(ValueError, match="none of the model's 14 classes"):
        match_classes(ImageIndex(tmp_path, [], dataset="csv", label_set=LabelSet("csv", ("Scar",), 0)), NIH_LABEL_SET)


@pytest.mark.slow
def test_restricted_metrics_are_those_of_the_scored_classes_alone():
    from cianet.evaluation.cross_dataset import restrict_metrics

    rng = np.random.default_rng(0)
    n, classes = 40, NIH_LABEL_SET
    scores = rng.random((n, 14))
    labels = (rng.random((n, 14)) < 0.3).astype(np.float32)
    labels[:, classes.index("Hernia")] = 0  # a left-out class: never positive here
    box_classes = np.array([0, 0, 4, 5, 5, 6, 2], np.int64)  # Atelectasis x2, Mass, Nodule x2, Pneumonia, Effusion
    ious = np.array([0.05, 0.6, 0.35, 0.15, 0.45, 0.9, 0.25])
    metrics = {
        "scores": scores,
        "labels": labels,
        "ious": ious,
        "box_classes": box_classes,
        "box_images": np.arange(7),
        "box_names": list("abcdefg"),
        "n_boxes": 7,
    }
    scored = ("Atelectasis", "Effusion", "Mass", "Nodule", "Consolidation")
    out = restrict_metrics(metrics, classes, scored, (0.1, 0.3, 0.5))
    assert list(out["auc"]) == [*scored, "Mean"]
    want = [pairwise_auc(scores[:, classes.index(c)], labels[:, classes.index(c)]) for c in scored]
    assert [out["auc"][c] for c in scored] == pytest.approx(want)
    assert out["auc"]["Mean"] == pytest.approx(sum(want) / len(want))
    # localization over the box classes scored (Pneumonia's box is gone): per class, the share of IoU > T
    assert list(out["localization"]["0.3"]) == ["Atelectasis", "Effusion", "Mass", "Nodule", "Mean"]
    row = out["localization"]["0.3"]
    assert (row["Atelectasis"], row["Effusion"], row["Mass"], row["Nodule"]) == (0.5, 0.0, 1.0, 0.5)
    assert row["Mean"] == pytest.approx(0.5)
    assert out["n_boxes"] == 6 and out["box_names"] == list("abcdeg") and out["scores"].shape == (n, 5)


def test_the_negative_pool_is_a_seeded_half_of_the_readable_no_finding_images(tmp_path):
    from cianet.evaluation.cross_dataset import reference_pool

    recs = [ImageRecord(f"{i}.png", str(i), () if i % 2 else ("Mass",), path=tmp_path / f"{i}.png") for i in range(20)]
    recs[1].path = None  # a No Finding image whose file is missing: never a negative
    index = ImageIndex(tmp_path, recs)
    pool = reference_pool(index, seed=3)
    assert pool == reference_pool(index, seed=3) and pool != reference_pool(index, seed=4)
    assert len(pool) == math.ceil(0.5 * 9) and set(pool) <= {f"{i}.png" for i in range(3, 20, 2)}
    assert pool == [r.name for r in recs if r.name in set(pool)]  # index order


@pytest.mark.slow
def test_evaluate_out_refuses_what_would_mix_up_the_runs_own_data(tmp_path, capsys):
    from helpers import make_run, write_chest_nih

    run, _ = make_run(tmp_path)
    cases = [
        (["--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "x")], "is the data the run trained on"),
        (["--data-root", str(tmp_path / "other"), "--out", str(run)], "is the run folder"),
        (["--out", str(tmp_path / "x")], "give that data set's --data-root"),
        (["--label-map", "nih"], "--label-map only apply to a cross-data-set evaluation: add --out"),
    ]
    write_chest_nih(tmp_path / "other", 4)
    for extra, message in cases:
        assert main(["evaluate", "--run", str(run), "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_bundle_reads_the_data_root_in_the_layout_given(tmp_path, capsys):
    from helpers import make_run

    run, _ = make_run(tmp_path)
    assert (
        main(["bundle", "--run", str(run), "--out", str(tmp_path / "m.cianet"), "--dataset", "csv", "--no-progress"])
        == 2
    )
    assert "images.csv" in capsys.readouterr().err  # read as the csv layout, whose table is not there
    assert not (tmp_path / "m.cianet").exists()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_run_trained_on_nih_is_scored_on_vindr_matching_classes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nih, vindr, run, out = tmp_path / "nih", tmp_path / "vindr", tmp_path / "run", tmp_path / "cross"
    common = ["--size", "64", "--workers", "1", "--annotated-share", "0.6"]
    assert main(["synth", str(nih), "--n-images", "32", "--seed", "1", *common]) == 0
    assert main(["synth", str(vindr), "--layout", "vindr", "--n-images", "24", "--seed", "2", *common]) == 0
    assert (
        main(
            [
                "train",
                "--config",
                "tiny",
                *NARROW,
                "--data-root",
                str(nih),
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
    before = {p.name: _digest(p) for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    # VinDr-CXR's class names are not NIH's: without the map nothing matches, and the error says what to do
    assert main(["evaluate", "--run", str(run), "--data-root", str(vindr), "--out", str(out), "--no-progress"]) == 2
    assert "--label-map nih" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(run),
                "--data-root",
                str(vindr),
                "--dataset",
                "vindr",
                "--label-map",
                "nih",
                "--out",
                str(out),
                "--no-progress",
                "--bootstrap",
                "20",
                "--json",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed["auc"] == metrics["auc"]
    cross = metrics["cross_dataset"]
    # the phantom's Pneumonia is VinDr-CXR's Lung Opacity, which has no NIH class: NIH Pneumonia is left out
    assert cross["left_out"] == ["Pneumonia", "Edema", "Emphysema", "Hernia"]
    assert "Lung Opacity" in cross["not_in_model"] and cross["label_map"] == "nih" and cross["dataset"] == "vindr"
    assert list(metrics["auc"]) == [*cross["scored"], "Mean"]
    assert list(metrics["localization"]["0.5"]) == [c for c in NIH_LABEL_SET.box_names if c in cross["scored"]] + [
        "Mean"
    ]
    rows = list(csv.DictReader(open(vindr / "train.csv")))
    images = {r["image_id"] for r in rows}
    no_finding = {r["image_id"] for r in rows if r["class_name"] == "No finding"}
    assert cross["images"] == len(images) and cross["negative_pool"] == math.ceil(len(no_finding) / 2)
    assert metrics["n_images"] == cross["scored_images"] == len(images) - cross["negative_pool"]
    assert metrics["n_boxes"] > 0 and metrics["ci"]["n_boot"] == 20
    with np.load(out / "predictions.npz") as z:
        assert z["scores"].shape == (metrics["n_images"], len(cross["scored"]))
        assert set(z["names"]) <= {f"{i}.dicom" for i in images}
    assert (
        "left out (no counterpart in the data set): Pneumonia, Edema, Emphysema, Hernia"
        in (out / "metrics.md").read_text()
    )
    assert not (out / "pairs.json").exists()  # the pairs of this evaluation are not kept as the run's
    paired = list(csv.DictReader(open(out / "negatives.csv")))  # but recorded: one row per scored image
    assert len(paired) == metrics["n_images"] and {r["split"] for r in paired} == {"test"}
    assert all(r["negative"] != r["image"] and r["strategy"] == "sim" for r in paired)
    assert {p.name: _digest(p) for p in run.iterdir() if p.is_file()} == before  # the run is untouched
    # its own evaluation still reads its own data, in the layout given
    assert main(["evaluate", "--run", str(run), "--dataset", "vindr", "--no-progress", "--bootstrap", "0"]) == 2
    assert "no train.csv" in capsys.readouterr().err

"""The data-set layer: RSNA Pneumonia and VinDr-CXR read from their real label tables (the copies in
torchxrayvision's wheel), the generic CSV layout, layout detection, the reader-box merge against a slow
reference, and the protocols on a data set other than NIH."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from cianet.cli import main
from cianet.data.box_merge import merge_boxes
from cianet.data.index import Box
from cianet.data.layouts import detect_dataset, open_index
from cianet.labels import NIH_LABEL_SET, LabelSet, label_set_from


def _txv_data() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")  # located, not imported (that would load torch models)
    if spec is None or not spec.origin:
        pytest.skip("torchxrayvision is not installed")
    return Path(spec.origin).parent / "data"


@pytest.fixture(scope="module")
def rsna_root(tmp_path_factory) -> Path:
    src = _txv_data() / "kaggle_stage_2_train_labels.csv.zip"
    if not src.is_file():
        pytest.skip("torchxrayvision ships no RSNA label table")
    root = tmp_path_factory.mktemp("rsna")
    (root / src.name).symlink_to(src)
    return root


@pytest.fixture(scope="module")
def vindr_root(tmp_path_factory) -> Path:
    src = _txv_data() / "vinbigdata-train.csv.gz"
    if not src.is_file():
        pytest.skip("torchxrayvision ships no VinDr-CXR table")
    root = tmp_path_factory.mktemp("vindr")
    (root / src.name).symlink_to(src)
    return root


@pytest.fixture(scope="module")
def vindr_unmerged(vindr_root):
    """The real VinDr-CXR index, every reader's box kept, metadata only."""
    return open_index(vindr_root, "vindr", scan=False, box_merge="none")


@pytest.fixture(scope="module")
def vindr_rows(vindr_root) -> list[dict]:
    with gzip.open(vindr_root / "vinbigdata-train.csv.gz", "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def _index_json(capsys, *argv) -> dict:
    assert main(["index", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------------------------------ RSNA
@pytest.mark.slow
def test_rsna_index_figures_from_the_real_table(rsna_root, capsys):
    s = _index_json(capsys, "--dataset", "rsna", "--data-root", str(rsna_root))
    assert s["dataset"] == "rsna" and s["rows"] == 30_227
    assert (s["images"], s["boxes"], s["annotated_images"]) == (26_684, 9_555, 6_012)
    assert s["boxes_per_class"] == {"Pneumonia": 9_555} and s["classes"] == 1
    assert s["no_finding"] == 26_684 - 6_012  # without the detailed class file: every Target 0 image
    assert s["missing_files"] == 26_684 and s["found_files"] == 0  # no image present
    assert "readers" not in s
    assert _index_json(capsys, "--data-root", str(rsna_root)) == s  # the layout is detected


def test_rsna_boxes_are_the_table_rows_in_x_y_w_h(rsna_root):
    with zipfile.ZipFile(rsna_root / "kaggle_stage_2_train_labels.csv.zip") as z:
        rows = list(csv.DictReader(io.TextIOWrapper(z.open(z.namelist()[0]), encoding="utf-8")))
    index = open_index(rsna_root, "rsna", scan=False)
    assert index.label_set.names == ("Pneumonia",) and index.label_set.n_box == 1
    positive = [r for r in rows if r["Target"] == "1"][:50]
    for r in positive:
        rec = index[f"{r['patientId']}.dcm"]
        assert rec.patient_id == r["patientId"] and rec.labels == ("Pneumonia",)
        want = tuple(float(r[k]) for k in ("x", "y", "width", "height"))
        assert want in [b.xywh() for b in rec.boxes]
    negative = next(r for r in rows if r["Target"] == "0")
    rec = index[f"{negative['patientId']}.dcm"]
    assert rec.labels == () and rec.boxes == [] and rec.no_finding


def test_rsna_detailed_class_info_decides_the_negatives(tmp_path):
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\na,,,,,0\nb,,,,,0\nc,1,2,3,4,1\nc,5,6,7,8,1\n"
    )
    (tmp_path / "stage_2_detailed_class_info.csv").write_text(
        "patientId,class\na,Normal\nb,No Lung Opacity / Not Normal\nc,Lung Opacity\n"
    )
    index = open_index(tmp_path)
    assert index.dataset == "rsna"
    assert [r.no_finding for r in index] == [True, False, False]
    assert [b.xywh() for b in index["c.dcm"].boxes] == [(1, 2, 3, 4), (5, 6, 7, 8)]


@pytest.mark.parametrize(
    "rows, match",
    [
        ("a,1,2,3,4,0\n", "a box on a Target 0 row"),
        ("a,,,,,1\n", "not four numbers"),
        ("a,1,2,0,4,1\n", "invalid box"),
        ("a,,,,,0\na,1,2,3,4,1\n", "Target 0 and Target 1"),
    ],
)
def test_rsna_bad_rows_name_file_and_line(tmp_path, rows, match):
    path = tmp_path / "stage_2_train_labels.csv"
    path.write_text("patientId,x,y,width,height,Target\n" + rows)
    with pytest.raises(ValueError, match=rf"stage_2_train_labels.csv: line \d: .*{match}"):
        open_index(tmp_path, "rsna")


# ----------------------------------------------------------------------------------------------- VinDr
@pytest.mark.slow
def test_vindr_index_figures_from_the_real_table(vindr_root, vindr_rows, capsys):
    s = _index_json(capsys, "--dataset", "vindr", "--data-root", str(vindr_root), "--box-merge", "none")
    assert s["dataset"] == "vindr"
    assert (s["rows"], s["images"], s["classes"], s["no_finding"]) == (67_914, 15_000, 14, 10_606)
    assert s["readers"] == 17 and s["missing_files"] == 15_000
    raw = Counter(r["class_name"] for r in vindr_rows if r["class_name"] != "No finding")
    assert s["boxes"] == s["reader_boxes"] == sum(raw.values()) == 36_096
    assert s["boxes_per_class"] == dict(raw)
    assert s["annotated_images"] == 15_000 - 10_606


@pytest.mark.slow
def test_vindr_merged_figures(vindr_root, vindr_rows, capsys):
    raw = Counter(r["class_name"] for r in vindr_rows if r["class_name"] != "No finding")
    merged = _index_json(capsys, "--data-root", str(vindr_root))  # detected; readers merged (mean, 0.4)
    assert merged["box_merge"] == {"rule": "mean", "iou": 0.4}
    assert merged["reader_boxes"] == 36_096 and merged["boxes"] < 36_096
    assert merged["boxes"] == sum(merged["boxes_per_class"].values())
    assert all(merged["boxes_per_class"][c] <= n for c, n in raw.items())


@pytest.mark.slow
def test_vindr_boxes_become_x_y_w_h_and_labels_are_any_reader(vindr_unmerged, vindr_rows):
    index = vindr_unmerged
    classes = {int(r["class_id"]): r["class_name"] for r in vindr_rows if r["class_name"] != "No finding"}
    assert index.label_set.names == tuple(classes[i] for i in range(14))
    by_image: dict[str, list[dict]] = {}
    for r in vindr_rows:
        by_image.setdefault(r["image_id"], []).append(r)
    for image_id in list(by_image)[:300]:
        rec = index[f"{image_id}.dicom"]
        rows = [r for r in by_image[image_id] if r["class_name"] != "No finding"]
        want = Counter(
            (
                r["class_name"],
                float(r["x_min"]),
                float(r["y_min"]),
                float(r["x_max"]) - float(r["x_min"]),
                float(r["y_max"]) - float(r["y_min"]),
            )
            for r in rows
        )
        assert Counter((b.label, *b.xywh()) for b in rec.boxes) == want
        assert set(rec.labels) == {r["class_name"] for r in rows}
        assert rec.no_finding == (not rows)


# --------------------------------------------------------------------------------- reader-box merging
def _slow_merge(boxes: list[Box], rule: str, t: float) -> list[tuple]:
    """Reference: per class, start from singletons and join any two groups holding a pair at IoU >= t until
    none is left; fuse each group by the mean of its corners or their enclosing box."""

    def iou(a, b):
        ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
        iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
        inter = ix * iy
        union = a.w * a.h + b.w * b.h - inter
        return inter / union if union > 0 else 0.0

    out = []
    for label in dict.fromkeys(b.label for b in boxes):
        groups = [[b] for b in boxes if b.label == label]
        joined = True
        while joined:
            joined = False
            for i in range(len(groups)):
                for j in range(i + 1, len(groups)):
                    if any(iou(a, b) >= t - 1e-12 for a in groups[i] for b in groups[j]):
                        groups[i] += groups.pop(j)
                        joined = True
                        break
                if joined:
                    break
        for g in groups:
            corners = [(b.x, b.y, b.x + b.w, b.y + b.h) for b in g]
            if rule == "mean":
                x0, y0, x1, y1 = (sum(c[k] for c in corners) / len(g) for k in range(4))
            else:
                x0, y0 = min(c[0] for c in corners), min(c[1] for c in corners)
                x1, y1 = max(c[2] for c in corners), max(c[3] for c in corners)
            out.append((label, x0, y0, x1 - x0, y1 - y0, len(g)))
    return sorted(out)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["mean", "union"])
@pytest.mark.parametrize("t", [0.2, 0.4, 0.6])
def test_merge_matches_the_slow_reference_on_real_vindr_rows(vindr_unmerged, rule, t):
    index = vindr_unmerged
    annotated = [r for r in index if r.boxes][::8]  # about 550 images, up to dozens of boxes each
    assert len(annotated) > 500
    merged_some = 0
    for rec in annotated:
        fast = sorted((b.label, b.x, b.y, b.w, b.h, b.readers) for b in merge_boxes(rec.boxes, rule, t))
        slow = _slow_merge(rec.boxes, rule, t)
        assert len(fast) == len(slow), rec.name
        for f, s in zip(fast, slow):
            assert (
                f[0] == s[0] and f[5] == s[5] and all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(f[1:5], s[1:5]))
            )
        merged_some += len(fast) < len(rec.boxes)
    assert merged_some > 100  # the real readers' boxes do overlap


def test_merge_rules_on_a_hand_example():
    a, b = Box("X", 0, 0, 10, 10), Box("X", 1, 0, 10, 10)  # IoU 90/110
    c = Box("X", 100, 100, 5, 5)  # far away
    d = Box("Y", 0, 0, 10, 10)  # another class at the same place
    mean = merge_boxes([a, b, c, d], "mean", 0.5)
    assert mean == [Box("X", 0.5, 0, 10, 10, readers=2), c, d]
    assert merge_boxes([a, b, c, d], "union", 0.5)[0] == Box("X", 0, 0, 11, 10, readers=2)
    assert merge_boxes([a, b, c, d], "none", 0.5) == [a, b, c, d]
    assert merge_boxes([a, b], "mean", 0.9) == [a, b]  # 0.818 < 0.9: two findings
    # single linkage: a-b and b-e overlap enough, a-e does not; all three are one finding
    e = Box("X", 2, 0, 10, 10)
    assert len(merge_boxes([a, e], "mean", 0.7)) == 2 and len(merge_boxes([a, b, e], "mean", 0.7)) == 1
    with pytest.raises(ValueError, match="box merge rule"):
        merge_boxes([a, b], "median", 0.5)
    with pytest.raises(ValueError, match="IoU"):
        merge_boxes([a, b], "mean", 0.0)


# ------------------------------------------------------------------------------------------ CSV layout
def _write_csv_root(root: Path, boxes: str | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "images.csv").write_text(
        "image,labels,patient\na.png,Nodule|Fibrosis,p1\nb.png,No Finding,p1\nc.png,,p2\nd.png,Fibrosis,p3\n"
    )
    if boxes is not None:
        (root / "boxes.csv").write_text(boxes)
    return root


def test_csv_layout_classes_labels_and_boxes(tmp_path):
    root = _write_csv_root(tmp_path, "image,label,x,y,w,h\na.png,Nodule,1,2,3,4\nd.png,Mass,5,6,7,8\n")
    index = open_index(root)
    assert index.dataset == "csv"
    assert index.label_set.names == ("Mass", "Nodule", "Fibrosis") and index.label_set.n_box == 2
    assert index["a.png"].labels == ("Nodule", "Fibrosis")
    assert index["d.png"].labels == ("Mass", "Fibrosis")  # a box implies its label
    assert index["b.png"].no_finding and index["c.png"].no_finding
    assert index.patients() == {"p1": ["a.png", "b.png"], "p2": ["c.png"], "p3": ["d.png"]}
    assert [b.xywh() for b in index["a.png"].boxes] == [(1, 2, 3, 4)]
    s = index.summary()
    assert (s["images"], s["boxes"], s["annotated_images"], s["no_finding"], s["missing_files"]) == (4, 2, 2, 2, 4)
    assert "readers" not in s


def test_csv_layout_merges_only_with_a_reader_column(tmp_path):
    rows = "a.png,Nodule,0,0,10,10{}\na.png,Nodule,1,0,10,10{}\n"
    plain = open_index(_write_csv_root(tmp_path / "p", "image,label,x,y,w,h\n" + rows.format("", "")))
    assert len(plain["a.png"].boxes) == 2
    read = open_index(_write_csv_root(tmp_path / "r", "image,label,x,y,w,h,reader\n" + rows.format(",r1", ",r2")))
    assert read["a.png"].boxes == [Box("Nodule", 0.5, 0, 10, 10, readers=2)]
    assert read.summary()["readers"] == 2 and read.summary()["reader_boxes"] == 2


@pytest.mark.parametrize(
    "boxes, match",
    [
        ("image,label,x,y,w,h\na.png,Nodule,1,2,3\n", r"boxes.csv: line 2: box .* is not four numbers"),
        ("image,label,x,y,w,h\na.png,Nodule,1,2,-3,4\n", r"boxes.csv: line 2: invalid box"),
        ("image,label,x,y\n", r"boxes.csv: line 1: malformed header, no column 'w'"),
    ],
)
def test_csv_layout_bad_box_rows_name_file_and_line(tmp_path, boxes, match):
    with pytest.raises(ValueError, match=match):
        open_index(_write_csv_root(tmp_path, boxes))


def test_csv_layout_negative_combined_with_a_finding_is_refused(tmp_path):
    (tmp_path / "images.csv").write_text("image,labels\na.png,No Finding|Mass\n")
    with pytest.raises(ValueError, match=r"images.csv: line 2: a negative label combined"):
        open_index(tmp_path, "csv")


# ---------------------------------------------------------------------------------------- detection
def test_detection_and_its_errors(tmp_path, capsys):
    _write_csv_root(tmp_path, None)
    assert detect_dataset(tmp_path) == "csv"
    (tmp_path / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\n")
    with pytest.raises(ValueError, match="several layouts are there \\(rsna, csv\\); pass --dataset"):
        detect_dataset(tmp_path)
    assert main(["index", "--data-root", str(tmp_path), "--dataset", "csv", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "csv"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert detect_dataset(empty) == "nih"  # the default layout, whose reader names what it misses
    assert main(["index", "--data-root", str(empty)]) == 2
    assert "--dataset rsna|vindr|csv" in capsys.readouterr().err
    (tmp_path / "train.csv").write_text("a,b\n1,2\n")  # a train.csv that is not VinDr-CXR's is no evidence
    with pytest.raises(ValueError, match="several layouts"):
        detect_dataset(tmp_path)
    assert main(["index", "--data-root", str(tmp_path), "--dataset", "vindr"]) == 2


# ----------------------------------------------------------------------------------------- label sets
def test_label_sets_recorded_as_name_lists():
    assert label_set_from(None, None) is NIH_LABEL_SET
    assert label_set_from(list(NIH_LABEL_SET.names), list(NIH_LABEL_SET.box_names)) == NIH_LABEL_SET
    ls = label_set_from(["A", "B", "C"], ["A"])
    assert (ls.names, ls.n_box, ls.box_names, ls.index("C")) == (("A", "B", "C"), 1, ("A",), 2)
    with pytest.raises(ValueError, match="must be the first classes"):
        label_set_from(["A", "B"], ["B"])
    with pytest.raises(ValueError, match="listed twice"):
        LabelSet("x", ["A", "A"], 0)
    with pytest.raises(KeyError, match="not a class of data set 'x'"):
        LabelSet("x", ["A"], 1).index("B")


# ------------------------------------------------------------------------------ protocols on any data set
@pytest.mark.slow
def test_protocols_on_vindr_use_the_boxed_images_as_the_annotated_pool(vindr_unmerged):
    from cianet.data.splits import localization_protocol, make_splits

    index = vindr_unmerged
    splits = make_splits(index, seed=3, k=5)
    folds = splits["localization_folds"]
    annotated = set(index.annotated_names())
    assert sorted(n for f in folds for n in f) == sorted(annotated) and len(annotated) == 4_394
    assert max(map(len, folds)) - min(map(len, folds)) <= 10  # sizes balanced (traded against box classes)
    assert splits["dataset"] == "vindr"
    assert set(splits["counts"]["localization_fold_boxes"][0]) <= set(index.label_set.names)
    cls = splits["classification"]
    assert sum(len(v) for v in cls.values()) == 15_000 and not set(cls["train"]) & set(cls["test"])
    proto = localization_protocol(index, folds, fold=1, annotated_ratio=0.4, unannotated_ratio=0.5, seed=3)
    assert set(proto.test) == set(folds[1]) and set(proto.train_annotated) <= annotated - set(folds[1])
    assert len(proto.train_annotated) == sum(len(folds[f]) for f in proto.annotated_folds)
    assert not set(proto.train) & set(proto.test)


# ------------------------------------------------------------------------------------ mapping to NIH
@pytest.mark.slow
def test_vindr_mapped_to_nih_classes(vindr_unmerged, vindr_root, capsys):
    from cianet.data.label_maps import map_index

    mapped = map_index(vindr_unmerged, "nih")
    assert mapped.label_set == NIH_LABEL_SET and mapped.dataset == "vindr"
    src = vindr_unmerged.summary()
    s = mapped.summary()
    assert s["per_label"]["Fibrosis"] == src["per_label"]["Pulmonary fibrosis"]
    assert s["per_label"]["Mass"] == s["per_label"]["Nodule"] == src["per_label"]["Nodule/Mass"]
    assert s["boxes_per_class"]["Effusion"] == src["boxes_per_class"]["Pleural effusion"]
    assert s["per_label"]["Edema"] == s["per_label"]["Hernia"] == 0
    assert s["no_finding"] == src["no_finding"] == 10_606  # negatives stay the source's negatives
    only_unmapped = [r for r in vindr_unmerged if r.labels and set(r.labels) <= set(s["unmapped_classes"])]
    assert only_unmapped and all(not mapped[r.name].labels and not mapped[r.name].no_finding for r in only_unmapped)
    assert set(s["unmapped_classes"]) == {"Aortic enlargement", "Calcification", "ILD", "Lung Opacity", "Other lesion"}
    assert vindr_unmerged.label_set.names[0] == "Aortic enlargement"  # the source index is untouched
    out = _index_json(capsys, "--data-root", str(vindr_root), "--box-merge", "none", "--label-map", "nih")
    assert out["per_label"] == s["per_label"]


def test_csv_boxes_of_unknown_images_warn_or_fail_when_strict(tmp_path, capsys):
    root = _write_csv_root(tmp_path, "image,label,x,y,w,h\nzz.png,Nodule,1,2,3,4\na.png,Nodule,1,2,3,4\n")
    index = open_index(root)
    assert index.orphan_boxes == 1 and index.summary()["boxes"] == 1
    assert "boxes.csv: 1 boxes name images absent from images.csv" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"zz.png \(line 2\)"):
        open_index(root, strict=True)

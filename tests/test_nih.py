"""NIH index: counts on the real metadata, image discovery, missing files, and error messages."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from cianet.cli import main
from cianet.data.nih import NIHIndex
from cianet.labels import LABELS

ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"

NIH_BOXES = {
    "Atelectasis": 180,
    "Effusion": 153,
    "Cardiomegaly": 146,
    "Infiltration": 123,
    "Pneumonia": 120,
    "Pneumothorax": 98,
    "Mass": 85,
    "Nodule": 79,
}


def entry_row(name: str, labels: str, patient: int, view: str = "PA") -> str:
    return f"{name},{labels},0,{patient},50,M,{view},2500,2048,0.143,0.143\n"


def write_fake_root(root: Path, gz: bool = False) -> Path:
    """Six images of four patients; files nested as NIH ships them, one missing, one duplicated."""
    rows = [
        entry_row("00000001_000.png", "Cardiomegaly|Effusion", 1),
        entry_row("00000001_001.png", "No Finding", 1, "AP"),
        entry_row("00000002_000.png", "Infiltration", 2),
        entry_row("00000003_000.png", "Mass|Nodule|Hernia", 3),
        entry_row("00000003_001.png", "No Finding", 3),
        entry_row("00000010_000.png", "Pneumothorax", 10),
    ]
    text = ENTRY_HEADER + "".join(rows)
    if gz:
        (root / "Data_Entry_2017.csv.gz").write_bytes(gzip.compress(text.encode()))
    else:
        (root / "Data_Entry_2017.csv").write_text(text)
    (root / "BBox_List_2017.csv").write_text(
        BBOX_HEADER
        + "00000001_000.png,Cardiomegaly,300.5,400,350,200.25\n"
        + "00000002_000.png,Infiltrate,10,20,30,40\n"
        + "00000002_000.png,Infiltrate,50,60,70,80\n"
    )
    for sub, names in {
        "images_001/images": ["00000001_000.png", "00000001_001.png", "00000002_000.png"],
        "images_002/images": ["00000003_000.png", "00000002_000.png"],  # duplicate of 00000002_000
        "images_002/images/.hidden": ["00000010_000.png"],  # hidden folders are not scanned
    }.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            (root / sub / n).write_bytes(b"\x89PNG fake")
    return root


# -- real NIH metadata ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nih_index(nih_metadata_dir) -> NIHIndex:
    return NIHIndex.from_root(nih_metadata_dir)


@pytest.mark.slow
def test_real_nih_counts(nih_index):
    s = nih_index.summary()
    assert s["images"] == 112_120
    assert s["patients"] == 30_805
    assert s["no_finding"] == 60_361
    assert s["annotated_images"] == 880
    assert s["boxes"] == 984
    assert {k: v for k, v in s["boxes_per_class"].items() if v} == NIH_BOXES
    assert s["missing_files"] == 112_120  # metadata only: every image missing, not fatal
    assert s["per_label"]["Hernia"] == 227 and s["per_label"]["Infiltration"] == 19_894
    # label matrix agrees with the records, column by column
    y = nih_index.label_matrix()
    assert y.shape == (112_120, 14) and y.dtype == np.float32
    assert [int(v) for v in y.sum(0)] == [s["per_label"][lab] for lab in LABELS]
    assert int((y.sum(1) == 0).sum()) == 60_361
    rec = nih_index["00000001_001.png"]
    assert rec.patient_id == "00000001" and rec.labels == ("Cardiomegaly", "Emphysema") and rec.view == "PA"


@pytest.mark.slow  # end to end through the CLI on full data
def test_real_nih_cli_json(nih_metadata_dir, capsys):
    assert main(["index", "--data-root", str(nih_metadata_dir), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    for key in (
        "images",
        "patients",
        "no_finding",
        "annotated_images",
        "boxes",
        "boxes_per_class",
        "missing_files",
        "per_label",
    ):
        assert key in s
    assert (s["images"], s["patients"], s["no_finding"], s["annotated_images"], s["boxes"]) == (
        112_120,
        30_805,
        60_361,
        880,
        984,
    )
    assert s["boxes_per_class"]["Atelectasis"] == 180 and s["boxes_per_class"]["Nodule"] == 79


def test_real_sample(nih_sample_dir, capsys):
    kw = dict(entry_csv="Data_Entry_2017_v2020_subset.csv", bbox_csv="BBox_List_2017_subset.csv")
    idx = NIHIndex.from_root(nih_sample_dir, strict=True, **kw)
    s = idx.summary()
    assert (s["images"], s["boxes"], s["no_finding"], s["missing_files"]) == (274, 16, 66, 0)
    assert all(r.path is not None and r.path.name == r.name and r.path.is_file() for r in idx)
    argv = [
        "index",
        "--data-root",
        str(nih_sample_dir),
        "--json",
        "--entry-csv",
        kw["entry_csv"],
        "--bbox-csv",
        kw["bbox_csv"],
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["boxes"] == 16
    # without the override the error names the root and what it looked for
    assert main(["index", "--data-root", str(nih_sample_dir)]) == 2
    err = capsys.readouterr().err
    assert str(nih_sample_dir) in err and "Data_Entry_2017.csv" in err and "--entry-csv" in err


# -- fake data roots ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_fake_root_nested_discovery_and_missing(tmp_path, gz):
    root = write_fake_root(tmp_path, gz=gz)
    idx = NIHIndex.from_root(root)
    s = idx.summary()
    assert s["images"] == 6 and s["patients"] == 4 and s["no_finding"] == 2
    assert s["missing_files"] == 2 and sorted(idx.missing()) == ["00000003_001.png", "00000010_000.png"]
    assert s["duplicate_files"] == 1
    # the first copy in sorted folder order wins
    assert idx["00000002_000.png"].path == root / "images_001/images/00000002_000.png"
    assert idx["00000003_000.png"].path == root / "images_002/images/00000003_000.png"
    # boxes: canonical label, file pixel frame kept as written
    b = idx["00000001_000.png"].boxes
    assert [(x.label, x.x, x.y, x.w, x.h) for x in b] == [("Cardiomegaly", 300.5, 400.0, 350.0, 200.25)]
    assert [x.label for x in idx["00000002_000.png"].boxes] == ["Infiltration", "Infiltration"]
    assert s["annotated_images"] == 2 and s["boxes"] == 3 and s["boxes_per_class"]["Infiltration"] == 2
    assert idx["00000010_000.png"].patient_id == "00000010"
    assert idx["00000003_000.png"].labels == ("Mass", "Nodule", "Hernia")
    assert idx["00000001_001.png"].no_finding and idx["00000001_001.png"].view == "AP"
    # label matrix against a loop reference
    y = idx.label_matrix(["00000003_000.png", "00000001_000.png"])
    ref = np.zeros((2, 14), np.float32)
    for i, labs in enumerate([("Mass", "Nodule", "Hernia"), ("Cardiomegaly", "Effusion")]):
        for lab in labs:
            ref[i, LABELS.index(lab)] = 1
    np.testing.assert_array_equal(y, ref)


def test_strict_and_images_required(tmp_path, capsys):
    root = write_fake_root(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"2 of 6 image files missing: .*00000003_001\.png"):
        NIHIndex.from_root(root, strict=True)
    assert main(["index", "--data-root", str(root), "--strict"]) == 2
    assert "2 of 6 image files missing" in capsys.readouterr().err
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "Data_Entry_2017.csv").write_text((root / "Data_Entry_2017.csv").read_text())
    assert NIHIndex.from_root(meta).summary()["missing_files"] == 6  # metadata only works
    assert NIHIndex.from_root(meta, scan=False).summary()["missing_files"] == 0
    with pytest.raises(FileNotFoundError, match="none of the 6 images"):
        NIHIndex.from_root(meta, images_required=True)


def test_orphan_boxes_counted_or_strict(tmp_path):
    root = write_fake_root(tmp_path)
    for p in (root / "images_002/images/.hidden").iterdir():
        (root / "images_002/images" / p.name).write_bytes(p.read_bytes())
    (root / "images_001/images/00000003_001.png").write_bytes(b"x")
    with open(root / "BBox_List_2017.csv", "a") as fh:
        fh.write("99999999_000.png,Mass,1,2,3,4\n")
    assert NIHIndex.from_root(root).orphan_boxes == 1
    with pytest.raises(ValueError, match=r"BBox_List_2017\.csv: 1 boxes .*99999999_000\.png \(line 5\)"):
        NIHIndex.from_root(root, strict=True)


def test_official_lists_read(tmp_path):
    root = write_fake_root(tmp_path)
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n\n")
    (root / "test_list.txt").write_text("00000002_000.png\n")
    idx = NIHIndex.from_root(root)
    assert idx.official_train_val == {"00000001_000.png", "00000001_001.png"}
    assert idx.official_test == {"00000002_000.png"}
    (root / "test_list.txt").unlink()
    idx = NIHIndex.from_root(root)
    assert idx.official_test is None and idx.summary()["official_test"] is None


# -- errors ---------------------------------------------------------------------------------------------


def test_missing_entry_csv_names_root(tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        NIHIndex.from_root(tmp_path)
    msg = str(exc.value)
    assert str(tmp_path) in msg and "Data_Entry_2017.csv" in msg and "Data_Entry_2017_v2020.csv" in msg
    with pytest.raises(FileNotFoundError, match="not a folder"):
        NIHIndex.from_root(tmp_path / "nope")


@pytest.mark.parametrize(
    "row, pattern",
    [
        ("00000005_000.png,Mass\n", r"Data_Entry_2017\.csv: line 3: malformed row"),
        (entry_row("00000005_000.png", "Mass|Dragon", 5), r"Data_Entry_2017\.csv: line 3: unknown label 'Dragon'"),
        (entry_row("00000001_000.png", "Mass", 1), r"line 3: image '00000001_000\.png' listed twice"),
        (entry_row("00000005_000.png", "No Finding|Mass", 5), r"line 3: 'No Finding' combined"),
        ('00000005_000.png,"Mass,0,5\n', r"Data_Entry_2017\.csv: line \d+: malformed"),
    ],
)
def test_malformed_entry_csv(tmp_path, row, pattern):
    (tmp_path / "Data_Entry_2017.csv").write_text(ENTRY_HEADER + entry_row("00000001_000.png", "Mass", 1) + row)
    with pytest.raises(ValueError, match=pattern):
        NIHIndex.from_root(tmp_path)


def test_bad_header_and_bbox_errors(tmp_path, capsys):
    (tmp_path / "Data_Entry_2017.csv").write_text("name,labels\na.png,Mass\n")
    with pytest.raises(ValueError, match=r"Data_Entry_2017\.csv: line 1: malformed header, no column 'Image Index'"):
        NIHIndex.from_root(tmp_path)
    (tmp_path / "Data_Entry_2017.csv").write_text(ENTRY_HEADER + entry_row("00000001_000.png", "Mass", 1))
    for body, pattern in [
        ("00000001_000.png,Tumour,1,2,3,4\n", r"BBox_List_2017\.csv: line 2: unknown label 'Tumour'"),
        ("00000001_000.png,Mass,1,2,three,4\n", r"BBox_List_2017\.csv: line 2: box .* not four numbers"),
        ("00000001_000.png,Mass,1,2,0,4\n", r"BBox_List_2017\.csv: line 2: invalid box"),
        ("00000001_000.png,Mass,1,2\n", r"BBox_List_2017\.csv: line 2: malformed row"),
    ]:
        (tmp_path / "BBox_List_2017.csv").write_text(BBOX_HEADER + body)
        with pytest.raises(ValueError, match=pattern):
            NIHIndex.from_root(tmp_path)
    # the CLI turns it into one line on stderr, exit status 2
    assert main(["index", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "BBox_List_2017.csv: line 2" in err
    (tmp_path / "Data_Entry_2017.csv").write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(ValueError, match=r"Data_Entry_2017\.csv: cannot read"):
        NIHIndex.from_root(tmp_path)

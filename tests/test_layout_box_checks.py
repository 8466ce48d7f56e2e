"""The box checks of ``cianet index --strict`` (``cianet.data.box_checks``) in every layout: a box outside its
image (PNG or DICOM, size from the header) or naming a finding its image lacks is an error with ``--strict``
and one warning line without it, in the RSNA, VinDr-CXR and CSV layouts as in NIH's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cianet.cli import main
from cianet.phantom.layouts import write_dicom_gray

PIXELS = np.full((40, 50), 100, np.uint8)  # 50 wide, 40 high


def _rsna(root: Path, box: str) -> Path:
    write_dicom_gray(root / "stage_2_train_images" / "p1.dcm", PIXELS, "t:p1")
    write_dicom_gray(root / "stage_2_train_images" / "p2.dcm", PIXELS, "t:p2")
    (root / "stage_2_train_labels.csv").write_text(
        f"patientId,x,y,width,height,Target\np1,10,10,5,5,1\np1,{box},1\np2,,,,,0\n"
    )
    return root


def _vindr(root: Path, box: str) -> Path:
    write_dicom_gray(root / "train" / "v1.dicom", PIXELS, "t:v1")
    write_dicom_gray(root / "train" / "v2.dicom", PIXELS, "t:v2")
    (root / "train.csv").write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        "v1,Cardiomegaly,3,R1,10,10,20,20\n"
        f"v1,Cardiomegaly,3,R2,{box}\n"
        "v2,No finding,14,R1,,,,\n"
    )
    return root


def _csv(root: Path, box: str) -> Path:
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(PIXELS).save(root / "images" / name)
    (root / "images.csv").write_text("image,labels\na.png,Nodule\nb.png,No Finding\n")
    (root / "boxes.csv").write_text(f"image,label,x,y,w,h\na.png,Nodule,10,10,5,5\n{box}\n")
    return root


@pytest.mark.parametrize(
    "layout, write, box, problem",
    [
        ("rsna", _rsna, "60,10,5,5", "p1.dcm: Pneumonia box (60, 10, 5, 5) lies outside the 50x40 image"),
        ("rsna", _rsna, "10,45,5,5", "lies outside the 50x40 image"),
        ("vindr", _vindr, "10,41,20,48", "v1.dicom: Cardiomegaly box (10, 41, 10, 7) lies outside the 50x40 image"),
        ("csv", _csv, "a.png,Nodule,-9,10,5,5", "a.png: Nodule box (-9, 10, 5, 5) lies outside the 50x40 image"),
        (
            "csv",
            _csv,
            "a.png,Mass,10,10,5,5",
            "a.png: Mass box (10, 10, 5, 5) names a finding the image does not have (Nodule)",
        ),
        ("csv", _csv, "b.png,Nodule,10,10,5,5", "names a finding the image does not have (No Finding)"),
    ],
)
def test_bad_boxes_fail_strict_and_warn_otherwise(layout, write, box, problem, tmp_path, capsys):
    root = write(tmp_path / layout, box)
    assert main(["index", "--data-root", str(root), "--strict"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "1 bad boxes" in lines[0] and problem in lines[0], lines[0]
    assert main(["index", "--data-root", str(root), "--json"]) == 0  # without --strict: read, with one warning
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if line.strip()]
    assert len(warning) == 1 and warning[0].startswith("warning: ") and problem in warning[0], captured.err
    assert "--strict makes this an error" in warning[0]
    summary = json.loads(captured.out)
    assert summary["dataset"] == layout and summary["missing_files"] == 0 and summary["boxes"] >= 1


@pytest.mark.parametrize(
    "layout, write, box",
    [
        ("rsna", _rsna, "30,20,20,20"),
        ("vindr", _vindr, "12,11,21,19"),
        ("csv", _csv, "a.png,Nodule,40,30,20,20"),
    ],
)
def test_good_boxes_pass_strict_silently(layout, write, box, tmp_path, capsys):
    root = write(tmp_path / layout, box)  # boxes that reach the image's edge or beyond it in part are fine
    assert main(["index", "--data-root", str(root), "--strict", "--json"]) == 0
    assert capsys.readouterr().err == ""

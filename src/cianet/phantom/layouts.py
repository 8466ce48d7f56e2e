"""The phantom (``cianet.phantom.generator``) written in the layout of another data set, so that every adapter can be
run end to end on images with known ground truth: ``cianet synth OUT --layout rsna|vindr|csv``.

The NIH-layout phantom is generated into a temporary folder beside ``OUT`` and re-expressed:

* ``rsna``: ``stage_2_train_labels.csv``, ``stage_2_detailed_class_info.csv`` and
  ``stage_2_train_images/<id>.dcm``. "Pneumonia" is any box-class finding of the phantom (all its boxes, as
  every RSNA positive has boxes); "Normal" the No Finding images; the rest "No Lung Opacity / Not Normal".
* ``vindr``: ``train.csv`` and ``train/<id>.dicom``. The phantom's box classes map to VinDr-CXR's
  (:data:`TO_VINDR`; Mass and Nodule both to "Nodule/Mass"), and each finding is marked by three readers
  (drawn from :data:`READERS`) whose boxes are the true box with seeded jitter of the corners, so the reader
  merge has overlapping boxes to merge. Images whose findings are all image-level (no VinDr class) are left
  out; No Finding images get three "No finding" rows.
* ``csv``: ``images.csv`` (with ``patient`` and ``follow_up``) and ``boxes.csv`` of the generic layout with the
  PNGs under ``images/``: the NIH labels and only the boxes of the annotated images, as the NIH layout has them.

DICOMs hold the phantom's 8-bit pixels scaled to 12 bits (MONOCHROME2, explicit VR little endian), with
UIDs derived from the seed and the image name, so the same seed writes the same bytes.
"""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from cianet.config import DATASETS, NIH, RSNA, VINDR
from cianet.data.nih import NIHIndex
from cianet.data.vindr import NO_FINDING, VINDR_CLASSES
from cianet.errors import InputError
from cianet.labels import BOX_LABELS
from cianet.labels import NO_FINDING as NIH_NO_FINDING
from cianet.phantom.generator import generate_dataset
from cianet.utils.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

LAYOUTS: tuple[str, ...] = DATASETS  # the phantom writes every layout cianet reads
TO_VINDR: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural effusion",
    "Infiltration": "Infiltration",
    "Mass": "Nodule/Mass",
    "Nodule": "Nodule/Mass",
    "Pneumonia": "Lung Opacity",
    "Pneumothorax": "Pneumothorax",
}
READERS: tuple[str, ...] = tuple(f"R{i}" for i in range(1, 7))
READERS_PER_IMAGE = 3
#: Reader jitter of each box corner, as a share of the box's side (standard deviation).
READER_JITTER = 0.06
RSNA_NEGATIVE_CLASSES = {"normal": "Normal", "abnormal": "No Lung Opacity / Not Normal", "positive": "Lung Opacity"}


def write_dicom_gray(path: Path, pixels: np.ndarray, uid_seed: str) -> None:
    """A single-frame grayscale DICOM of uint8 ``pixels`` (stored as 12-bit values), written atomically."""
    # lazy: pydicom is needed for DICOM files only
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.ascontiguousarray(pixels).astype("<u2") * 16).tobytes()
    ds.preamble = b"\0" * 128
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    atomic_write_bytes(path, buf.getvalue())


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _truth_boxes(root: Path) -> dict[str, list[tuple[str, float, float, float, float]]]:
    """image name -> every true box (class, x, y, w, h) of synth_truth.csv, annotated or not."""
    out: dict[str, list] = {}
    with open(root / "synth_truth.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            boxes = out.setdefault(row["Image Index"], [])
            if row["box_label"]:
                boxes.append((row["box_label"], *(float(row[k]) for k in ("x", "y", "w", "h"))))
    return out


def _csv_text(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _write_rsna(nih: Path, out: Path, index, truth: dict) -> dict:
    labels_rows = [["patientId", "x", "y", "width", "height", "Target"]]
    info_rows = [["patientId", "class"]]
    (out / "stage_2_train_images").mkdir(parents=True, exist_ok=True)
    for rec in index.records:
        pid = Path(rec.name).stem
        boxes = [b for b in truth.get(rec.name, []) if b[0] in BOX_LABELS]
        if boxes:
            labels_rows += [[pid, *(repr(v) for v in b[1:]), 1] for b in boxes]
            info_rows.append([pid, RSNA_NEGATIVE_CLASSES["positive"]])
        else:
            labels_rows.append([pid, "", "", "", "", 0])
            info_rows.append([pid, RSNA_NEGATIVE_CLASSES["normal" if rec.no_finding else "abnormal"]])
        write_dicom_gray(out / "stage_2_train_images" / f"{pid}.dcm", _read_png(rec.path), f"rsna:{pid}")
    atomic_write_text(out / "stage_2_train_labels.csv", _csv_text(labels_rows))
    atomic_write_text(out / "stage_2_detailed_class_info.csv", _csv_text(info_rows))
    return {"images": len(index.records), "rows": len(labels_rows) - 1}


def _write_vindr(nih: Path, out: Path, index, truth: dict, seed: int) -> dict:
    rows = [["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]]
    (out / "train").mkdir(parents=True, exist_ok=True)
    kept = left_out = 0
    for i, rec in enumerate(index.records):
        image_id = Path(rec.name).stem
        boxes = [(TO_VINDR[b[0]], *b[1:]) for b in truth.get(rec.name, []) if b[0] in TO_VINDR]
        if not boxes and not rec.no_finding:
            left_out += 1  # findings VinDr-CXR has no class for
            continue
        rng = np.random.default_rng([seed, 13, i])
        readers = sorted(rng.choice(len(READERS), size=READERS_PER_IMAGE, replace=False))
        pixels = _read_png(rec.path)
        h, w = pixels.shape
        for r in readers:
            if not boxes:
                rows.append([image_id, NO_FINDING, len(VINDR_CLASSES), READERS[r], "", "", "", ""])
            for label, x, y, bw, bh in boxes:
                jx0, jy0, jx1, jy1 = rng.normal(0.0, READER_JITTER, size=4) * [bw, bh, bw, bh]
                x0, y0 = float(np.clip(x + jx0, 0, w - 1)), float(np.clip(y + jy0, 0, h - 1))
                x1, y1 = float(np.clip(x + bw + jx1, x0 + 1, w)), float(np.clip(y + bh + jy1, y0 + 1, h))
                rows.append(
                    [
                        image_id,
                        label,
                        VINDR_CLASSES.index(label),
                        READERS[r],
                        f"{x0:.1f}",
                        f"{y0:.1f}",
                        f"{x1:.1f}",
                        f"{y1:.1f}",
                    ]
                )
        write_dicom_gray(out / "train" / f"{image_id}.dicom", pixels, f"vindr:{image_id}")
        kept += 1
    atomic_write_text(out / "train.csv", _csv_text(rows))
    return {"images": kept, "left_out": left_out, "rows": len(rows) - 1}


def _write_csv(nih: Path, out: Path, index) -> dict:
    (out / "images").mkdir(parents=True, exist_ok=True)
    image_rows = [["image", "labels", "patient", "follow_up"]]
    box_rows = [["image", "label", "x", "y", "w", "h"]]
    for rec in index.records:
        image_rows.append(
            [rec.name, "|".join(rec.labels) if rec.labels else NIH_NO_FINDING, rec.patient_id, str(rec.follow_up)]
        )
        box_rows += [[rec.name, b.label, repr(b.x), repr(b.y), repr(b.w), repr(b.h)] for b in rec.boxes]
        shutil.copyfile(rec.path, out / "images" / rec.name)
    atomic_write_text(out / "images.csv", _csv_text(image_rows))
    atomic_write_text(out / "boxes.csv", _csv_text(box_rows))
    return {"images": len(index.records), "boxes": len(box_rows) - 1}


def write_layout(out_dir, layout: str, seed: int = 0, overwrite: bool = False, **synth_args) -> dict:
    """Generate the phantom (``cianet.phantom.generator.generate_dataset`` with ``seed`` and ``synth_args``) and write
    it to ``out_dir`` in ``layout`` (see the module docstring). Returns the phantom's summary with the layout's
    counts under ``"layout"``."""
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if layout == NIH:
        return generate_dataset(out_dir, seed=seed, overwrite=overwrite, **synth_args)
    if synth_args.get("twins"):
        raise InputError("--twins is only written in the nih layout")
    if synth_args.get("extra_negatives"):
        raise InputError("--extra-negatives is only written in the nih layout")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} is not empty (pass --overwrite to write into it)")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synth-nih-", dir=out.parent))
    try:
        summary = generate_dataset(tmp, seed=seed, overwrite=True, **synth_args)
        index = NIHIndex.from_root(tmp, strict=True)
        if layout == RSNA:
            counts = _write_rsna(tmp, out, index, _truth_boxes(tmp))
        elif layout == VINDR:
            counts = _write_vindr(tmp, out, index, _truth_boxes(tmp), seed)
        else:
            counts = _write_csv(tmp, out, index)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {**summary, "out_dir": str(out), "layout": {"name": layout, **counts}}  # not the temporary folder
    atomic_write_json(out / "synth_layout.json", summary)
    return summary

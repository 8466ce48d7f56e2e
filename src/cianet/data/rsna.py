"""The RSNA Pneumonia Detection Challenge (Kaggle, 2018) as an :class:`~cianet.data.index.ImageIndex`.

A data root holds the challenge's download as Kaggle unpacks it::

    R/stage_2_train_labels.csv [.gz | .zip]     patientId, x, y, width, height, Target   (required)
    R/stage_2_detailed_class_info.csv [...]     patientId, class                          (optional)
    R/stage_2_train_images/<patientId>.dcm      the DICOM images (optional: metadata-only works)

One image per patient; a row per box of a positive image (``Target`` 1) and one empty row per negative image.
The one class is "Pneumonia" (the boxes mark lung opacities suggestive of it). Boxes are ``x, y, width,
height`` in the 1024 x 1024 DICOM pixel frame already, so they are taken as they are. The negatives (the
pool CIA-Net pairs with) are the images the detailed class file calls "Normal" when it is present (an image
without pneumonia may still be abnormal: "No Lung Opacity / Not Normal"), else every image with Target 0.
"""

from __future__ import annotations

import os
from pathlib import Path

from cianet.config import RSNA
from cianet.data.box_checks import check_boxes
from cianet.data.index import Box, ImageIndex, ImageRecord, attach_paths
from cianet.data.tables import cell, column, find_metadata_file, header_of, locate_table, parse_xywh, read_rows
from cianet.errors import InputError
from cianet.labels import LabelSet

LABELS_CSV_NAMES: tuple[str, ...] = (
    "stage_2_train_labels.csv",
    "kaggle_stage_2_train_labels.csv",
    "stage_1_train_labels.csv",
)
CLASS_INFO_CSV_NAMES: tuple[str, ...] = ("stage_2_detailed_class_info.csv", "stage_1_detailed_class_info.csv")
SUFFIXES: tuple[str, ...] = ("", ".gz", ".zip")
RSNA_LABEL_SET = LabelSet(RSNA, ("Pneumonia",), 1, no_finding="Normal")
NORMAL_CLASS = "Normal"


def find_labels_csv(root: Path) -> Path | None:
    return find_metadata_file(root, LABELS_CSV_NAMES, SUFFIXES)


def read_rsna_labels(path: Path) -> tuple[list[ImageRecord], int]:
    """Records (one per patientId, file order; boxes in the DICOM frame) and the number of rows read.

    ValueError naming file and line for a bad row: a positive row without a box, a negative row with one,
    a patient both positive and negative, a box that is not four finite numbers with positive size.
    """
    rows = read_rows(path)
    header = header_of(rows, path, "stage_2_train_labels")
    c_id, c_target = column(header, "patientId", path, exact=True), column(header, "Target", path, exact=True)
    c_box = [column(header, k, path, exact=True) for k in ("x", "y", "width", "height")]
    records: dict[str, ImageRecord] = {}
    n_rows = 0
    for line, row in rows:
        n_rows += 1
        pid, target = cell(row, c_id), cell(row, c_target)
        if not pid or target not in ("0", "1"):
            raise InputError(f"{path}: line {line}: need a patientId and Target 0 or 1, got {pid!r}, {target!r}")
        rec = records.get(pid)
        if rec is None:
            rec = records[pid] = ImageRecord(
                name=f"{pid}.dcm", patient_id=pid, labels=("Pneumonia",) if target == "1" else ()
            )
        elif bool(rec.labels) != (target == "1"):
            raise InputError(f"{path}: line {line}: patient {pid} is listed with Target 0 and Target 1")
        texts = [cell(row, i) for i in c_box]
        if target == "0":
            if any(texts):
                raise InputError(f"{path}: line {line}: a box on a Target 0 row")
            continue
        rec.boxes.append(Box("Pneumonia", *parse_xywh(texts, path, line)))
    return list(records.values()), n_rows


def read_class_info(path: Path) -> dict[str, str]:
    """patientId -> class of stage_2_detailed_class_info.csv ("Lung Opacity", "Normal", ...)."""
    rows = read_rows(path)
    header = header_of(rows, path, "stage_2_detailed_class_info")
    c_id, c_class = column(header, "patientId", path, exact=True), column(header, "class", path, exact=True)
    return {cell(row, c_id): cell(row, c_class) for _, row in rows}


def rsna_index(
    data_root: str | os.PathLike,
    strict: bool = False,
    images_required: bool = False,
    labels_csv: str | os.PathLike | None = None,
    scan: bool = True,
) -> ImageIndex:
    """The index of an RSNA Pneumonia data root (see the module docstring); ``labels_csv`` overrides the
    label file's name (relative to the root or absolute)."""
    root = Path(data_root)
    path = locate_table(
        root,
        labels_csv,
        find_labels_csv,
        "RSNA label CSV",
        f"no {LABELS_CSV_NAMES[0]}[.gz|.zip] in the data root "
        "(the RSNA Pneumonia layout; pass --entry-csv to name another file)",
    )
    records, n_rows = read_rsna_labels(path)
    info_path = find_metadata_file(root, CLASS_INFO_CSV_NAMES, SUFFIXES)
    if info_path is not None:
        info = read_class_info(info_path)
        for rec in records:
            rec.negative = info.get(rec.patient_id) == NORMAL_CLASS
    duplicates = 0
    if scan:
        duplicates = attach_paths(root, records, path.name, images_required=images_required, strict=strict)
    check_boxes(records, str(path), strict)  # a box outside its DICOM: ValueError with --strict, else a warning
    return ImageIndex(
        root,
        records,
        entry_csv=path,
        bbox_csv=path,
        duplicate_files=duplicates,
        files_scanned=scan,
        label_set=RSNA_LABEL_SET,
        dataset=RSNA,
        facts={"rows": n_rows, "class_info_csv": info_path.name if info_path else None},
    )

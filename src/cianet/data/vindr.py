"""VinDr-CXR (as released for the VinBigData Chest X-ray Abnormalities Detection competition) as an
:class:`~cianet.data.index.ImageIndex`.

A data root holds::

    V/train.csv [.gz | .zip]        image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max
                                    (torchxrayvision's copy, vinbigdata-train.csv.gz, is found too)
    V/train/<image_id>.dicom        the DICOM images (optional: metadata-only works)

Each of (usually) three radiologists (``rad_id``) gives one row per box, or one "No finding" row. Boxes are
corners in the DICOM pixel frame; they become ``x, y, w, h`` and the readers' boxes of one finding are merged
by the rule of ``cianet.data.box_merge``. The image's labels are the classes any reader boxed; an image is a
negative when its readers only said "No finding". The public release has no patient ids, so each image is
its own patient (splits are image-disjoint).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from cianet.config import VINDR
from cianet.data.box_checks import check_boxes
from cianet.data.box_merge import DEFAULT_MERGE, DEFAULT_MERGE_IOU, check_merge, merge_boxes
from cianet.data.index import Box, ImageIndex, ImageRecord, attach_paths
from cianet.data.tables import cell, column, find_metadata_file, header_of, locate_table, optional_column, read_rows
from cianet.errors import InputError
from cianet.labels import LabelSet
from cianet.utils.file_memo import parsed_once

TRAIN_CSV_NAMES: tuple[str, ...] = ("train.csv", "vinbigdata-train.csv")
SUFFIXES: tuple[str, ...] = ("", ".gz", ".zip")
NO_FINDING = "No finding"
#: The 14 finding classes in the competition's class_id order (0..13; "No finding" is 14).
VINDR_CLASSES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
)
VINDR_LABEL_SET = LabelSet(VINDR, VINDR_CLASSES, len(VINDR_CLASSES), no_finding=NO_FINDING)


def find_train_csv(root: Path) -> Path | None:
    return find_metadata_file(root, TRAIN_CSV_NAMES, SUFFIXES)


def read_vindr_rows(path: Path) -> tuple[list[ImageRecord], dict]:
    """Records (one per image_id in order of first row; every reader's box, unmerged) and facts: ``rows``,
    ``readers`` (distinct rad_id), ``reader_boxes``. ValueError naming file and line for a bad row."""
    images, classes, facts = parsed_once(path, _parse_vindr_rows)
    records = [
        ImageRecord(name=f"{image}.dicom", patient_id=image, labels=(), boxes=list(boxes)) for image, boxes in images
    ]
    return records, {**facts, "_classes": {image: set(names) for image, names in classes.items()}}


def _parse_vindr_rows(path: Path) -> tuple[tuple, dict[str, frozenset[str]], dict]:
    """(image_id, its boxes) in order of first row, image_id -> its classes, the facts: kept by
    :func:`~cianet.utils.file_memo.parsed_once`, so nothing a caller may modify."""
    rows = read_rows(path)
    header = header_of(rows, path, "VinDr-CXR train")
    c_id, c_class = column(header, "image_id", path, exact=True), column(header, "class_name", path, exact=True)
    c_rad = optional_column(header, "rad_id")
    c_box = [column(header, k, path, exact=True) for k in ("x_min", "y_min", "x_max", "y_max")]
    boxes_of: dict[str, list[Box]] = {}
    classes: dict[str, set[str]] = {}
    readers: set[str] = set()
    n_rows = n_boxes = 0
    for line, row in rows:
        n_rows += 1
        image, name = cell(row, c_id), cell(row, c_class)
        if not image or not name:
            raise InputError(f"{path}: line {line}: empty image_id or class_name")
        if c_rad is not None:
            reader = cell(row, c_rad)
            if reader:
                readers.add(reader)
        boxes = boxes_of.get(image)
        if boxes is None:
            boxes = boxes_of[image] = []
            classes[image] = set()
        texts = [cell(row, i) for i in c_box]
        if name == NO_FINDING:
            if any(texts):
                raise InputError(f"{path}: line {line}: a box on a '{NO_FINDING}' row")
            continue
        try:
            x0, y0, x1, y1 = (float(t) for t in texts)
        except ValueError:
            raise InputError(f"{path}: line {line}: box {texts} of {name!r} is not four numbers") from None
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
            raise InputError(
                f"{path}: line {line}: invalid box x_min={x0} y_min={y0} x_max={x1} y_max={y1} "
                "(need finite corners, max > min)"
            )
        boxes.append(Box(name, x0, y0, x1 - x0, y1 - y0))
        classes[image].add(name)
        n_boxes += 1
    return (
        tuple((image, tuple(boxes)) for image, boxes in boxes_of.items()),
        {image: frozenset(names) for image, names in classes.items()},
        {"rows": n_rows, "readers": len(readers), "reader_boxes": n_boxes},
    )


def vindr_index(
    data_root: str | os.PathLike,
    strict: bool = False,
    images_required: bool = False,
    train_csv: str | os.PathLike | None = None,
    scan: bool = True,
    box_merge: str = DEFAULT_MERGE,
    merge_iou: float = DEFAULT_MERGE_IOU,
) -> ImageIndex:
    """The index of a VinDr-CXR data root (see the module docstring), readers' boxes merged by ``box_merge``
    at ``merge_iou`` (``cianet.data.box_merge``); ``train_csv`` overrides the table's name."""
    check_merge(box_merge, merge_iou)
    root = Path(data_root)
    path = locate_table(
        root,
        train_csv,
        find_train_csv,
        "VinDr-CXR train CSV",
        "no train.csv[.gz|.zip] in the data root (the VinDr-CXR layout; pass --entry-csv to name another file)",
    )
    records, facts = read_vindr_rows(path)
    classes = facts.pop("_classes")
    extra = sorted({c for cs in classes.values() for c in cs} - set(VINDR_CLASSES))
    label_set = (
        VINDR_LABEL_SET
        if not extra
        else LabelSet(VINDR, VINDR_CLASSES + tuple(extra), len(VINDR_CLASSES) + len(extra), no_finding=NO_FINDING)
    )
    for rec in records:
        rec.labels = label_set.sort(classes[rec.patient_id])
    duplicates = 0
    if scan:
        duplicates = attach_paths(root, records, path.name, images_required=images_required, strict=strict)
    check_boxes(records, str(path), strict)  # every reader's own box, before the merge
    for rec in records:
        rec.boxes = merge_boxes(rec.boxes, box_merge, merge_iou)
    facts["box_merge"] = {"rule": box_merge, "iou": float(merge_iou)}
    return ImageIndex(
        root,
        records,
        entry_csv=path,
        bbox_csv=path,
        duplicate_files=duplicates,
        files_scanned=scan,
        label_set=label_set,
        dataset=VINDR,
        facts=facts,
    )

"""Any chest X-ray data set described by two plain CSV files (the ``csv`` layout; format in the README,
"Your own data set"), as an :class:`~cianet.data.index.ImageIndex`::

    D/images.csv [.gz]   image, labels [, patient, follow_up]  one row per image            (required)
    D/boxes.csv [.gz]    image, label, x, y, w, h [, reader]  one row per box               (optional)
    D/**/<image>         the image files, anywhere below D (PNG, JPEG or DICOM)

``image`` is the file's name (unique in the data set); ``labels`` the image's classes separated by ``|``,
empty (or "No Finding") for a negative; ``patient`` groups images for patient-disjoint splits (each image is
its own patient when the column is absent); ``follow_up`` (a whole number, with ``patient``) orders a
patient's studies in time, which prior studies (``cianet.data.priors``) need. A box is ``x, y, w, h`` in the
image file's pixel frame; its class counts as a label of its image. A box whose class ``images.csv`` does not
list for its image, or which lies outside the image, is a warning (an error with ``--strict``;
``cianet.data.box_checks``). With a ``reader`` column the readers' boxes are merged as
``cianet.data.box_merge`` says; without one every box is its own finding.

The classes are those with boxes, by name, then those without, by name: the model's first output channels
are the box classes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cianet.config import CSV
from cianet.data.box_checks import check_boxes
from cianet.data.box_merge import DEFAULT_MERGE, DEFAULT_MERGE_IOU, check_merge, merge_boxes
from cianet.data.index import Box, ImageIndex, ImageRecord, attach_paths, few
from cianet.data.tables import (
    cell,
    column,
    find_metadata_file,
    header_of,
    optional_column,
    parse_xywh,
    read_rows,
    resolve_path,
)
from cianet.errors import InputError, MissingPathError
from cianet.labels import LabelSet

IMAGES_CSV = "images.csv"
BOXES_CSV = "boxes.csv"
NEGATIVE_SPELLINGS = frozenset({"no finding", "none", "normal"})


def read_images_csv(path: Path) -> list[ImageRecord]:
    rows = read_rows(path)
    header = header_of(rows, path, IMAGES_CSV)
    c_image, c_labels = column(header, "image", path, exact=True), column(header, "labels", path, exact=True)
    c_patient = optional_column(header, "patient")
    c_follow = optional_column(header, "follow_up")
    if c_follow is not None and c_patient is None:
        raise InputError(f"{path}: a 'follow_up' column needs a 'patient' column (whose studies it orders)")
    records: list[ImageRecord] = []
    seen: set[str] = set()
    for line, row in rows:
        name = cell(row, c_image)
        if not name or "/" in name or "\\" in name:
            raise InputError(f"{path}: line {line}: 'image' must be a file name (no folders), got {name!r}")
        if name in seen:
            raise InputError(f"{path}: line {line}: image {name!r} listed twice")
        seen.add(name)
        parts = [p.strip() for p in cell(row, c_labels).split("|") if p.strip()]
        if any(p.lower() in NEGATIVE_SPELLINGS for p in parts):
            if len(parts) > 1:
                raise InputError(f"{path}: line {line}: a negative label combined with findings in {parts}")
            parts = []
        records.append(
            ImageRecord(
                name=name,
                patient_id=cell(row, c_patient) or name,
                labels=tuple(parts),
                follow_up=_follow_up(cell(row, c_follow), path, line),
            )
        )
    return records


def _follow_up(text: str, path: Path, line: int) -> int | None:
    """An empty cell: unknown (the image has no prior); otherwise a whole number >= 0."""
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"{path}: line {line}: 'follow_up' must be a whole number, got {text!r}") from None
    if value < 0:
        raise InputError(f"{path}: line {line}: 'follow_up' must be >= 0, got {value}")
    return value


def read_boxes_csv(path: Path) -> tuple[list[tuple[int, str, Box, str]], bool]:
    """``(line, image, Box, reader)`` rows and whether the file has a ``reader`` column."""
    rows = read_rows(path)
    header = header_of(rows, path, BOXES_CSV)
    c_image, c_label = column(header, "image", path, exact=True), column(header, "label", path, exact=True)
    c_box = [column(header, k, path, exact=True) for k in ("x", "y", "w", "h")]
    c_reader = optional_column(header, "reader")
    out = []
    for line, row in rows:
        name, label = cell(row, c_image), cell(row, c_label)
        if not name or not label:
            raise InputError(f"{path}: line {line}: empty 'image' or 'label'")
        texts = [cell(row, i) for i in c_box]
        out.append((line, name, Box(label, *parse_xywh(texts, path, line)), cell(row, c_reader)))
    return out, c_reader is not None


def csv_index(
    data_root: str | os.PathLike,
    strict: bool = False,
    images_required: bool = False,
    images_csv: str | os.PathLike | None = None,
    boxes_csv: str | os.PathLike | None = None,
    scan: bool = True,
    box_merge: str = DEFAULT_MERGE,
    merge_iou: float = DEFAULT_MERGE_IOU,
) -> ImageIndex:
    """The index of a data root in the generic CSV layout (see the module docstring)."""
    check_merge(box_merge, merge_iou)
    root = Path(data_root)
    if not root.is_dir():
        raise MissingPathError(f"data root {root} is not a folder")
    img_path = resolve_path(root, images_csv) or find_metadata_file(root, (IMAGES_CSV,))
    if img_path is None or not img_path.is_file():
        raise MissingPathError(
            f"{img_path or root / IMAGES_CSV}: no image table (the generic CSV layout needs "
            f"{IMAGES_CSV} with columns image, labels[, patient])"
        )
    records = read_images_csv(img_path)
    by_name = {r.name: r for r in records}
    box_path = resolve_path(root, boxes_csv)
    if box_path is None:
        box_path = find_metadata_file(root, (BOXES_CSV,))
    elif not box_path.is_file():
        raise MissingPathError(f"{box_path}: box CSV not found")
    orphans: list[str] = []
    readers: set[str] = set()
    has_readers = False
    if box_path is not None:
        orphans, readers, has_readers = _attach_boxes(box_path, img_path, by_name, strict)
    duplicates = 0
    if scan:
        duplicates = attach_paths(root, records, img_path.name, images_required=images_required, strict=strict)
    if box_path is not None:  # against the labels images.csv lists, on every reader's own box
        check_boxes(records, str(box_path), strict)
    box_classes = sorted({b.label for r in records for b in r.boxes})
    other = sorted({lab for r in records for lab in r.labels} - set(box_classes))
    label_set = LabelSet(CSV, tuple(box_classes) + tuple(other), len(box_classes))
    facts: dict = {}
    reader_boxes = sum(len(r.boxes) for r in records)
    for rec in records:
        rec.labels = label_set.sort(set(rec.labels) | {b.label for b in rec.boxes})
        if has_readers:
            rec.boxes = merge_boxes(rec.boxes, box_merge, merge_iou)
    if has_readers:
        facts = {
            "readers": len(readers),
            "reader_boxes": reader_boxes,
            "box_merge": {"rule": box_merge, "iou": float(merge_iou)},
        }
    return ImageIndex(
        root,
        records,
        entry_csv=img_path,
        bbox_csv=box_path,
        orphan_boxes=len(orphans),
        duplicate_files=duplicates,
        files_scanned=scan,
        label_set=label_set,
        dataset=CSV,
        facts=facts,
    )


def _attach_boxes(
    box_path: Path, img_path: Path, by_name: dict[str, ImageRecord], strict: bool
) -> tuple[list[str], set[str], bool]:
    """Add the boxes of ``box_path`` to their images' records: (orphan boxes, reader ids, whether the CSV
    names readers)."""
    orphans: list[str] = []
    readers: set[str] = set()
    rows, has_readers = read_boxes_csv(box_path)
    for line, name, box, reader in rows:
        rec = by_name.get(name)
        if rec is None:
            orphans.append(f"{name} (line {line})")
            continue
        rec.boxes.append(box)
        readers.add(reader)
    if orphans and strict:
        raise InputError(f"{box_path}: {len(orphans)} boxes name images absent from {img_path.name}: {few(orphans)}")
    if orphans:  # as the NIH reader: never dropped silently
        print(
            f"warning: {box_path}: {len(orphans)} boxes name images absent from {img_path.name} and are "
            f"ignored: {few(orphans)} (--strict makes this an error)",
            file=sys.stderr,
        )
    return orphans, readers, has_readers

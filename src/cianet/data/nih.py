"""The NIH ChestX-ray14 index: image-level labels, boxes, patients and where each image file lives.

A data root holds the NIH metadata files (plain or gzipped) and the images anywhere below it::

    D/Data_Entry_2017.csv | Data_Entry_2017_v2020.csv [.gz]   image labels, patient, view   (required)
    D/BBox_List_2017.csv [.gz]                                 boxes of 880 images           (optional)
    D/train_val_list.txt, D/test_list.txt                      official split                (optional)
    D/images/*.png  or  D/images_001/images/*.png ...          images (optional: metadata-only works)

Boxes stay in the pixel frame of the image file (the 1024 x 1024 PNG NIH ships), as
docs/architecture.md fixes; the ``OriginalImage[Width,Height]`` columns describe the DICOM the PNG was
made from and are kept only as metadata.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path

from cianet.data.box_checks import check_boxes
from cianet.data.index import Box, ImageIndex, ImageRecord, attach_paths, few
from cianet.data.tables import IMAGE_EXTENSIONS, find_metadata_file, paused_gc, resolve_path, scan_images
from cianet.data.tables import cell as _cell
from cianet.data.tables import column as _column
from cianet.data.tables import open_text as _open_text
from cianet.data.tables import read_rows as _read_rows
from cianet.errors import InputError, MissingPathError
from cianet.labels import LABELS, NO_FINDING, canonical_label
from cianet.utils.file_memo import parsed_once

__all__ = [
    "Box",
    "ImageRecord",
    "NIHIndex",
    "IMAGE_EXTENSIONS",
    "find_metadata_file",
    "scan_images",
    "read_data_entry",
    "read_bbox_list",
    "read_name_list",
]

#: Accepted names of the image-level label file, most preferred first (v2020 fixes patient ages).
ENTRY_CSV_NAMES: tuple[str, ...] = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BBOX_CSV_NAMES: tuple[str, ...] = ("BBox_List_2017.csv",)
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"


def _parse_labels(text: str, path: Path, line: int) -> tuple[str, ...]:
    parts = [p.strip() for p in text.split("|") if p.strip()]
    if not parts:
        raise InputError(f"{path}: line {line}: empty 'Finding Labels'")
    if parts == [NO_FINDING]:
        return ()
    found: set[str] = set()
    for part in parts:
        if part == NO_FINDING:
            raise InputError(f"{path}: line {line}: '{NO_FINDING}' combined with findings in {text!r}")
        try:
            found.add(canonical_label(part))
        except KeyError:
            raise InputError(f"{path}: line {line}: unknown label {part!r}") from None
    return tuple(lab for lab in LABELS if lab in found)


def _patient_from(raw: str, name: str) -> str:
    """Zero-pad a numeric Patient ID to the width of the file name's prefix ("1" -> "00000001")."""
    raw = raw.strip()
    prefix = name.split("_", 1)[0]
    if raw.isdigit() and prefix.isdigit() and int(raw) == int(prefix):
        return prefix
    return raw.zfill(8) if raw.isdigit() else raw


def _optional_int(text: str) -> int | None:
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        return None


#: The fields of one Data_Entry row, as :func:`read_data_entry` builds an ImageRecord from them.
_EntryRow = tuple[str, str, tuple[str, ...], "str | None", "int | None", "tuple[int, int] | None"]


def read_data_entry(path: Path) -> list[ImageRecord]:
    """Parse Data_Entry_2017[_v2020].csv into records (boxes empty, paths unset).

    Raises ValueError naming the file and line for a malformed row, an unknown label or a duplicate name.
    """
    with paused_gc():
        return [
            ImageRecord(name=n, patient_id=p, labels=labs, view=v, follow_up=f, original_size=size)
            for n, p, labs, v, f, size in parsed_once(path, _parse_data_entry)
        ]


def _parse_data_entry(path: Path) -> list[_EntryRow]:
    rows = _read_rows(path)
    try:
        _, header = next(rows)
    except StopIteration:
        raise InputError(f"{path}: empty file, expected a Data_Entry_2017 CSV header") from None
    c_name = _column(header, "Image Index", path)
    c_labels = _column(header, "Finding Labels", path)
    c_patient = _column(header, "Patient ID", path)
    optional = {}
    for key, wanted in (("view", "View Position"), ("follow", "Follow-up"), ("width", "OriginalImage[")):
        try:
            optional[key] = _column(header, wanted, path)
        except ValueError:
            pass
    c_view, c_follow, c_width = optional.get("view"), optional.get("follow"), optional.get("width")
    need = max(c_name, c_labels, c_patient) + 1
    out: list[_EntryRow] = []
    seen: set[str] = set()
    # The full file has 112,120 rows but under a thousand distinct label texts: parse each text once.
    labels_of: dict[str, tuple[str, ...]] = {}
    int_of = functools.cache(_optional_int)  # sizes and follow-up numbers repeat too
    for line, row in rows:
        if len(row) < need:
            raise InputError(f"{path}: line {line}: malformed row, {len(row)} fields where {need}+ expected")
        name = row[c_name].strip()
        patient = row[c_patient].strip()
        if not name or not patient:
            raise InputError(f"{path}: line {line}: empty 'Image Index' or 'Patient ID'")
        if name in seen:
            raise InputError(f"{path}: line {line}: image {name!r} listed twice")
        seen.add(name)
        size = None
        if c_width is not None and len(row) > c_width + 1:
            w, h = int_of(row[c_width]), int_of(row[c_width + 1])
            size = (w, h) if w and h else None
        labels = labels_of.get(row[c_labels])
        if labels is None:  # a bad text raises here, naming the first line it is on
            labels = labels_of[row[c_labels]] = _parse_labels(row[c_labels], path, line)
        view = _cell(row, c_view)
        out.append((name, _patient_from(patient, name), labels, view or None, int_of(_cell(row, c_follow)), size))
    return out


def read_bbox_list(path: Path) -> list[tuple[int, str, Box]]:
    """Parse BBox_List_2017.csv into ``(line, image name, Box)``; labels canonical ("Infiltrate" -> "Infiltration").

    The header's trailing empty cells are ignored. Raises ValueError naming file and line for a bad row. A row
    that repeats an earlier one exactly (image, label, box) is dropped, with one warning line counting them: it
    would weigh that box twice.
    """
    rows = _read_rows(path)
    try:
        _, header = next(rows)
    except StopIteration:
        raise InputError(f"{path}: empty file, expected a BBox_List_2017 CSV header") from None
    c_name = _column(header, "Image Index", path)
    c_label = _column(header, "Finding Label", path)
    c_box = _column(header, "Bbox", path)
    out: list[tuple[int, str, Box]] = []
    seen: set[tuple] = set()
    repeated: list[int] = []
    for line, row in rows:
        if len(row) < c_box + 4:
            raise InputError(f"{path}: line {line}: malformed row, {len(row)} fields where {c_box + 4}+ expected")
        name = row[c_name].strip()
        label_text = row[c_label].strip()
        try:
            label = canonical_label(label_text)
        except KeyError:
            raise InputError(f"{path}: line {line}: unknown label {label_text!r}") from None
        try:
            x, y, w, h = (float(v) for v in row[c_box : c_box + 4])
        except ValueError:
            raise InputError(f"{path}: line {line}: box {row[c_box : c_box + 4]} is not four numbers") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise InputError(f"{path}: line {line}: invalid box x={x} y={y} w={w} h={h} (need finite, w, h > 0)")
        if (name, label, x, y, w, h) in seen:
            repeated.append(line)
            continue
        seen.add((name, label, x, y, w, h))
        out.append((line, name, Box(label, x, y, w, h)))
    if repeated:
        print(
            f"warning: {path}: {len(repeated)} duplicate box rows dropped (lines {', '.join(map(str, repeated[:3]))}"
            f"{' ...' if len(repeated) > 3 else ''})",
            file=sys.stderr,
        )
    return out


def read_name_list(path: Path) -> set[str]:
    """Read an official split list (one image name per line)."""
    try:
        with _open_text(path) as fh:
            return {line.strip() for line in fh if line.strip()}
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc


def _entry_csv_path(root: Path, entry_csv: str | os.PathLike | None) -> Path:
    """The Data_Entry CSV: ``entry_csv`` (which must exist), else the standard name in ``root``; a missing one
    is reported with what the root holds instead."""
    entry_path = resolve_path(root, entry_csv)
    if entry_path is None:
        entry_path = find_metadata_file(root, ENTRY_CSV_NAMES)
        if entry_path is None:
            expected = " or ".join(f"{n}[.gz]" for n in ENTRY_CSV_NAMES)
            near = sorted(p.name for p in root.glob("Data_Entry*"))
            hint = (
                f"; found {', '.join(near)}: pass it with --entry-csv"
                if near
                else " (or pass --entry-csv; another layout: --dataset rsna|vindr|csv)"
            )
            raise MissingPathError(f"{root}: no {expected} in the data root{hint}")
    elif not entry_path.is_file():
        raise MissingPathError(f"{entry_path}: entry CSV not found")
    return entry_path


def _attach_boxes(bbox_path: Path, records: list[ImageRecord], entry_name: str, strict: bool) -> list[str]:
    """Add the boxes of ``bbox_path`` to their ``records``; the boxes naming no record ("name (line N)"), an
    error with ``strict``."""
    by_name = {r.name: r for r in records}
    orphans: list[str] = []
    for line, name, box in read_bbox_list(bbox_path):
        rec = by_name.get(name)
        if rec is None:
            orphans.append(f"{name} (line {line})")
        else:
            rec.boxes.append(box)
    if orphans and strict:
        raise InputError(f"{bbox_path}: {len(orphans)} boxes name images absent from {entry_name}: {few(orphans)}")
    return orphans


def _official_lists(root: Path) -> dict[str, set[str] | None]:
    """The official train_val and test lists, None each where the root has none."""
    lists = {}
    for key, fname in (("train_val", TRAIN_VAL_LIST), ("test", TEST_LIST)):
        p = find_metadata_file(root, (fname,))
        lists[key] = read_name_list(p) if p is not None else None
    return lists


class NIHIndex(ImageIndex):
    """All images of a ChestX-ray14 data root, in Data_Entry order (:class:`~cianet.data.index.ImageIndex`
    with the 14 NIH classes and the official split lists)."""

    @classmethod
    def from_root(
        cls,
        data_root: str | os.PathLike,
        strict: bool = False,
        images_required: bool = False,
        entry_csv: str | os.PathLike | None = None,
        bbox_csv: str | os.PathLike | None = None,
        scan: bool = True,
    ) -> NIHIndex:
        """Load the metadata at ``data_root`` and find each image file below it.

        Args:
            strict: raise if any listed image file is missing, a box names an image not in the entry CSV, or a
                box is bad (``cianet.data.box_checks``: outside its image, no area, a finding the image lacks;
                a warning without ``strict``).
            images_required: raise if no image file at all is found (by default metadata only works).
            entry_csv / bbox_csv: file to use instead of the standard names (relative to the root or absolute).
            scan: look for image files (False: metadata only, every ``path`` is None, nothing counted missing).
        """
        root = Path(data_root)
        if not root.is_dir():
            raise MissingPathError(f"data root {root} is not a folder")

        entry_path = _entry_csv_path(root, entry_csv)
        records = read_data_entry(entry_path)

        bbox_path = resolve_path(root, bbox_csv)
        if bbox_path is None:
            bbox_path = find_metadata_file(root, BBOX_CSV_NAMES)
        elif not bbox_path.is_file():
            raise MissingPathError(f"{bbox_path}: bbox CSV not found")
        orphans = _attach_boxes(bbox_path, records, entry_path.name, strict) if bbox_path is not None else []
        lists = _official_lists(root)

        duplicates = 0
        if scan:
            duplicates = attach_paths(root, records, entry_path.name, images_required=images_required, strict=strict)
        if orphans and not strict:
            print(
                f"warning: {bbox_path}: {len(orphans)} boxes name images absent from {entry_path.name} and are "
                f"ignored: {few(orphans)} (--strict makes this an error)",
                file=sys.stderr,
            )
        if bbox_path is not None:
            check_boxes(records, str(bbox_path), strict)  # ValueError with --strict, else a warning

        return cls(
            root,
            records,
            official_train_val=lists["train_val"],
            official_test=lists["test"],
            entry_csv=entry_path,
            bbox_csv=bbox_path,
            orphan_boxes=len(orphans),
            duplicate_files=duplicates,
            files_scanned=scan,
        )

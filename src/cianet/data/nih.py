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

import csv
import gzip
import io
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from cianet.labels import BOX_LABELS, LABEL_TO_INDEX, LABELS, NO_FINDING, NUM_CLASSES, canonical_label

#: Accepted names of the image-level label file, most preferred first (v2020 fixes patient ages).
ENTRY_CSV_NAMES: tuple[str, ...] = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BBOX_CSV_NAMES: tuple[str, ...] = ("BBox_List_2017.csv",)
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"

#: File extensions taken for images while scanning the root (matched case-insensitively).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".dcm"})

#: How many names an error message lists before "...".
_NAMES_IN_ERRORS = 5


@dataclass(frozen=True)
class Box:
    """One box of BBox_List_2017.csv: ``[x, x + w) x [y, y + h)`` in the image file's pixel frame."""

    label: str
    x: float
    y: float
    w: float
    h: float

    def xywh(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.w, self.h)


@dataclass
class ImageRecord:
    """Everything the index knows about one image."""

    name: str  # "00000001_000.png"
    patient_id: str  # "00000001", zero padded as in the file name
    labels: tuple[str, ...]  # subset of LABELS in LABELS order; () == No Finding
    boxes: list[Box] = field(default_factory=list)  # canonical labels, file pixel frame
    path: Path | None = None  # where the file was found under the root; None if missing
    view: str | None = None  # "PA" / "AP" when known
    follow_up: int | None = None
    #: (width, height) of the DICOM NIH converted from; NOT the frame of the boxes.
    original_size: tuple[int, int] | None = None

    @property
    def no_finding(self) -> bool:
        return not self.labels

    @property
    def annotated(self) -> bool:
        """True when the image has at least one box."""
        return bool(self.boxes)

    @property
    def box_labels(self) -> tuple[str, ...]:
        """The distinct labels of this image's boxes, in LABELS order."""
        present = {b.label for b in self.boxes}
        return tuple(lab for lab in LABELS if lab in present)


def find_metadata_file(root: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` (each tried plain, then ``.gz``) present in ``root``, else None."""
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _open_text(path: Path) -> io.TextIOBase:
    """Open a plain or gzipped text file (gzip detected by magic bytes, not by name)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _read_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` of a CSV file, skipping blank lines; errors name the file."""
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh)
            try:
                for row in reader:
                    if row and any(cell.strip() for cell in row):
                        yield reader.line_num, row
            except csv.Error as exc:
                raise ValueError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from exc
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise FileNotFoundError(f"{path}: no such file") from exc
        raise ValueError(f"{path}: cannot read ({exc})") from exc


def _column(header: list[str], wanted: str, path: Path) -> int:
    """Index of the header cell starting with ``wanted`` (NIH headers split ``[x,y]`` over cells)."""
    for i, cell in enumerate(header):
        if cell.strip().startswith(wanted):
            return i
    raise ValueError(f"{path}: line 1: malformed header, no column {wanted!r} (header: {','.join(header)})")


def _parse_labels(text: str, path: Path, line: int) -> tuple[str, ...]:
    parts = [p.strip() for p in text.split("|") if p.strip()]
    if not parts:
        raise ValueError(f"{path}: line {line}: empty 'Finding Labels'")
    if parts == [NO_FINDING]:
        return ()
    found: set[str] = set()
    for part in parts:
        if part == NO_FINDING:
            raise ValueError(f"{path}: line {line}: '{NO_FINDING}' combined with findings in {text!r}")
        try:
            found.add(canonical_label(part))
        except KeyError:
            raise ValueError(f"{path}: line {line}: unknown label {part!r}") from None
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


def _cell(row: list[str], i: int | None) -> str:
    """Stripped cell ``i`` of ``row``, "" when the column is absent or the row is short."""
    return row[i].strip() if i is not None and i < len(row) else ""


def read_data_entry(path: Path) -> list[ImageRecord]:
    """Parse Data_Entry_2017[_v2020].csv into records (boxes empty, paths unset).

    Raises ValueError naming the file and line for a malformed row, an unknown label or a duplicate name.
    """
    rows = _read_rows(path)
    try:
        _, header = next(rows)
    except StopIteration:
        raise ValueError(f"{path}: empty file, expected a Data_Entry_2017 CSV header") from None
    c_name = _column(header, "Image Index", path)
    c_labels = _column(header, "Finding Labels", path)
    c_patient = _column(header, "Patient ID", path)
    optional = {}
    for key, wanted in (("view", "View Position"), ("follow", "Follow-up"), ("width", "OriginalImage[")):
        try:
            optional[key] = _column(header, wanted, path)
        except ValueError:
            pass
    need = max(c_name, c_labels, c_patient) + 1
    records: list[ImageRecord] = []
    seen: set[str] = set()
    for line, row in rows:
        if len(row) < need:
            raise ValueError(f"{path}: line {line}: malformed row, {len(row)} fields where {need}+ expected")
        name = row[c_name].strip()
        patient = row[c_patient].strip()
        if not name or not patient:
            raise ValueError(f"{path}: line {line}: empty 'Image Index' or 'Patient ID'")
        if name in seen:
            raise ValueError(f"{path}: line {line}: image {name!r} listed twice")
        seen.add(name)
        view = _cell(row, optional.get("view"))
        follow = _optional_int(_cell(row, optional.get("follow")))
        size = None
        if "width" in optional and len(row) > optional["width"] + 1:
            w, h = _optional_int(row[optional["width"]]), _optional_int(row[optional["width"] + 1])
            size = (w, h) if w and h else None
        records.append(
            ImageRecord(
                name=name,
                patient_id=_patient_from(patient, name),
                labels=_parse_labels(row[c_labels], path, line),
                view=view or None,
                follow_up=follow,
                original_size=size,
            )
        )
    return records


def read_bbox_list(path: Path) -> list[tuple[int, str, Box]]:
    """Parse BBox_List_2017.csv into ``(line, image name, Box)``; labels canonical ("Infiltrate" -> "Infiltration").

    The header's trailing empty cells are ignored. Raises ValueError naming file and line for a bad row.
    """
    rows = _read_rows(path)
    try:
        _, header = next(rows)
    except StopIteration:
        raise ValueError(f"{path}: empty file, expected a BBox_List_2017 CSV header") from None
    c_name = _column(header, "Image Index", path)
    c_label = _column(header, "Finding Label", path)
    c_box = _column(header, "Bbox", path)
    out: list[tuple[int, str, Box]] = []
    for line, row in rows:
        if len(row) < c_box + 4:
            raise ValueError(f"{path}: line {line}: malformed row, {len(row)} fields where {c_box + 4}+ expected")
        name = row[c_name].strip()
        label_text = row[c_label].strip()
        try:
            label = canonical_label(label_text)
        except KeyError:
            raise ValueError(f"{path}: line {line}: unknown label {label_text!r}") from None
        try:
            x, y, w, h = (float(v) for v in row[c_box : c_box + 4])
        except ValueError:
            raise ValueError(f"{path}: line {line}: box {row[c_box:c_box + 4]} is not four numbers") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise ValueError(f"{path}: line {line}: invalid box x={x} y={y} w={w} h={h} (need finite, w, h > 0)")
        out.append((line, name, Box(label, x, y, w, h)))
    return out


def read_name_list(path: Path) -> set[str]:
    """Read an official split list (one image name per line)."""
    try:
        with _open_text(path) as fh:
            return {line.strip() for line in fh if line.strip()}
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from exc


def scan_images(root: Path) -> tuple[dict[str, Path], int]:
    """Map file name -> path for every image file under ``root`` (one recursive scandir pass).

    Hidden folders are skipped. When a name occurs more than once the first in sorted folder order wins;
    returns ``(mapping, number of duplicate files ignored)``.
    """
    found: dict[str, Path] = {}
    duplicates = 0
    seen: set[tuple[int, int]] = set()  # (device, inode) of visited folders: symlink loops end here
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue  # unreadable folder: its images count as missing
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=True):
                subdirs.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                if entry.name in found:
                    duplicates += 1
                else:
                    found[entry.name] = Path(entry.path)
        stack.extend(reversed(subdirs))  # depth first, in sorted order
    return found, duplicates


def _resolve(root: Path, override: str | os.PathLike | None) -> Path | None:
    if override is None:
        return None
    p = Path(override)
    return p if p.is_absolute() else root / p


def _few(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_NAMES_IN_ERRORS])
    return shown + (", ..." if len(names) > _NAMES_IN_ERRORS else "")


class NIHIndex:
    """All images of a ChestX-ray14 data root, in Data_Entry order.

    ``records[i]`` is an ImageRecord; ``index[name]`` looks one up by file name.
    """

    def __init__(
        self,
        root: Path,
        records: list[ImageRecord],
        official_train_val: set[str] | None = None,
        official_test: set[str] | None = None,
        entry_csv: Path | None = None,
        bbox_csv: Path | None = None,
        orphan_boxes: int = 0,
        duplicate_files: int = 0,
        files_scanned: bool = True,
    ) -> None:
        self.root = Path(root)
        self.records = records
        self.official_train_val = official_train_val
        self.official_test = official_test
        self.entry_csv = entry_csv
        self.bbox_csv = bbox_csv
        self.orphan_boxes = orphan_boxes  # boxes whose image is not in the entry CSV (skipped)
        self.duplicate_files = duplicate_files  # image files found twice under the root (first kept)
        self.files_scanned = files_scanned
        self._by_name = {r.name: i for i, r in enumerate(records)}

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
            strict: raise if any listed image file is missing or a box names an image not in the entry CSV.
            images_required: raise if no image file at all is found (by default metadata only works).
            entry_csv / bbox_csv: file to use instead of the standard names (relative to the root or absolute).
            scan: look for image files (False: metadata only, every ``path`` is None, nothing counted missing).
        """
        root = Path(data_root)
        if not root.is_dir():
            raise FileNotFoundError(f"data root {root} is not a folder")

        entry_path = _resolve(root, entry_csv)
        if entry_path is None:
            entry_path = find_metadata_file(root, ENTRY_CSV_NAMES)
            if entry_path is None:
                expected = " or ".join(f"{n}[.gz]" for n in ENTRY_CSV_NAMES)
                near = sorted(p.name for p in root.glob("Data_Entry*"))
                hint = f"; found {', '.join(near)}: pass it with --entry-csv" if near else " (or pass --entry-csv)"
                raise FileNotFoundError(f"{root}: no {expected} in the data root{hint}")
        elif not entry_path.is_file():
            raise FileNotFoundError(f"{entry_path}: entry CSV not found")
        records = read_data_entry(entry_path)
        by_name = {r.name: r for r in records}

        bbox_path = _resolve(root, bbox_csv)
        if bbox_path is None:
            bbox_path = find_metadata_file(root, BBOX_CSV_NAMES)
        elif not bbox_path.is_file():
            raise FileNotFoundError(f"{bbox_path}: bbox CSV not found")
        orphans: list[str] = []
        if bbox_path is not None:
            for line, name, box in read_bbox_list(bbox_path):
                rec = by_name.get(name)
                if rec is None:
                    orphans.append(f"{name} (line {line})")
                else:
                    rec.boxes.append(box)
            if orphans and strict:
                raise ValueError(
                    f"{bbox_path}: {len(orphans)} boxes name images absent from {entry_path.name}: {_few(orphans)}"
                )

        lists = {}
        for key, fname in (("train_val", TRAIN_VAL_LIST), ("test", TEST_LIST)):
            p = find_metadata_file(root, (fname,))
            lists[key] = read_name_list(p) if p is not None else None

        duplicates = 0
        if scan:
            files, duplicates = scan_images(root)
            stems: dict[str, Path] | None = None
            for rec in records:
                rec.path = files.get(rec.name)
                if rec.path is None and files:
                    # Accept a re-encoded copy with the same stem (e.g. 00000001_000.jpg).
                    if stems is None:
                        stems = {}
                        for fname, fpath in files.items():
                            stems.setdefault(os.path.splitext(fname)[0], fpath)
                    rec.path = stems.get(os.path.splitext(rec.name)[0])
            missing = [r.name for r in records if r.path is None]
            if images_required and len(missing) == len(records):
                raise FileNotFoundError(
                    f"{root}: none of the {len(records)} images of {entry_path.name} found below it"
                )
            if strict and missing:
                raise FileNotFoundError(
                    f"{root}: {len(missing)} of {len(records)} image files missing: {_few(missing)}"
                )

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

    # -- access ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> ImageRecord:
        try:
            return self.records[self._by_name[name]]
        except KeyError:
            raise KeyError(f"image {name!r} is not in the index of {self.root}") from None

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def subset(self, names: Iterable[str]) -> list[ImageRecord]:
        """Records of ``names``, in the order given (KeyError naming the first unknown name)."""
        return [self[n] for n in names]

    def restrict(self, names: Iterable[str]) -> NIHIndex:
        """A new index over only ``names`` (records shared, Data_Entry order kept)."""
        keep = set(names)
        unknown = keep - self._by_name.keys()
        if unknown:
            raise KeyError(f"{len(unknown)} names not in the index of {self.root}: {_few(sorted(unknown))}")
        return NIHIndex(
            self.root,
            [r for r in self.records if r.name in keep],
            official_train_val=self.official_train_val,
            official_test=self.official_test,
            entry_csv=self.entry_csv,
            bbox_csv=self.bbox_csv,
            orphan_boxes=self.orphan_boxes,
            duplicate_files=self.duplicate_files,
            files_scanned=self.files_scanned,
        )

    def present(self) -> list[str]:
        """Names whose image file was found."""
        return [r.name for r in self.records if r.path is not None]

    def missing(self) -> list[str]:
        """Names whose image file was not found (empty when files were not scanned)."""
        return [r.name for r in self.records if r.path is None] if self.files_scanned else []

    def annotated_names(self) -> list[str]:
        return [r.name for r in self.records if r.annotated]

    def patients(self) -> dict[str, list[str]]:
        """patient id -> names of that patient's images (Data_Entry order)."""
        out: dict[str, list[str]] = {}
        for r in self.records:
            out.setdefault(r.patient_id, []).append(r.name)
        return out

    def label_matrix(self, names: Sequence[str] | None = None) -> np.ndarray:
        """(N, 14) float32 0/1 matrix in LABELS column order; rows follow ``names`` (default: all)."""
        recs = self.records if names is None else self.subset(names)
        out = np.zeros((len(recs), NUM_CLASSES), dtype=np.float32)  # (N, 14)
        for i, r in enumerate(recs):
            for lab in r.labels:
                out[i, LABEL_TO_INDEX[lab]] = 1.0
        return out

    def summary(self) -> dict:
        """Counts describing the index (JSON-serializable)."""
        per_label = Counter(lab for r in self.records for lab in r.labels)
        box_counts = Counter(b.label for r in self.records for b in r.boxes)
        views = Counter(r.view for r in self.records if r.view)
        return {
            "root": str(self.root),
            "entry_csv": self.entry_csv.name if self.entry_csv else None,
            "bbox_csv": self.bbox_csv.name if self.bbox_csv else None,
            "images": len(self.records),
            "patients": len({r.patient_id for r in self.records}),
            "no_finding": sum(r.no_finding for r in self.records),
            "annotated_images": sum(r.annotated for r in self.records),
            "boxes": sum(box_counts.values()),
            "boxes_per_class": {lab: box_counts[lab] for lab in LABELS if lab in BOX_LABELS or box_counts[lab]},
            "per_label": {lab: per_label[lab] for lab in LABELS},
            "views": dict(sorted(views.items())),
            "files_scanned": self.files_scanned,
            "found_files": len(self.present()),
            "missing_files": len(self.missing()),
            "duplicate_files": self.duplicate_files,
            "orphan_boxes": self.orphan_boxes,
            "official_train_val": None if self.official_train_val is None else len(self.official_train_val),
            "official_test": None if self.official_test is None else len(self.official_test),
        }

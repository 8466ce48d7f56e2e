"""The index of a chest X-ray data set, whatever its layout: images with their labels, boxes, patient and
file. Each data-set adapter (``cianet.data.nih``, ``rsna``, ``vindr``, ``generic_csv``; chosen by
``cianet.data.layouts.open_index``) reads its own files into an :class:`ImageIndex`, and everything
downstream (splits, cache, training, evaluation) reads only this interface.

Boxes are ``x, y, w, h`` in the pixel frame of the image file the index points at (the DICOM pixel grid for
RSNA and VinDr-CXR, the 1024 px PNG for NIH).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cianet.config import NIH
from cianet.data.priors import PRIOR_COUNT_KEYS, prior_counts
from cianet.data.tables import scan_images
from cianet.errors import InputError, MissingPathError
from cianet.labels import LABEL_TO_INDEX, LABELS, NIH_LABEL_SET, LabelSet

#: How many names an error message lists before "...".
NAMES_IN_ERRORS = 5
#: Names of No Finding images that only serve as negatives (``cianet synth --extra-negatives``), one per line
#: in the data root: never trained on, validated or tested, still in the negative pool and the hash index.
POOL_ONLY_FILE = "pool_only.txt"


@dataclass(frozen=True)
class Box:
    """One box ``[x, x + w) x [y, y + h)`` in the image file's pixel frame.

    ``readers``: how many readers' boxes were merged into this one (``cianet.data.box_merge``); 1 otherwise.
    """

    label: str
    x: float
    y: float
    w: float
    h: float
    readers: int = 1

    def xywh(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.w, self.h)


@dataclass
class ImageRecord:
    """Everything the index knows about one image."""

    name: str  # "00000001_000.png": the image file's name (its stem matches re-encoded copies too)
    patient_id: str  # "00000001", zero padded as in the file name
    labels: tuple[str, ...]  # subset of the data set's classes in column order; () == no finding
    boxes: list[Box] = field(default_factory=list)  # canonical labels, file pixel frame
    path: Path | None = None  # where the file was found under the root; None if missing
    view: str | None = None  # "PA" / "AP" when known
    follow_up: int | None = None
    #: (width, height) of the DICOM NIH converted from; NOT the frame of the boxes.
    original_size: tuple[int, int] | None = None
    #: Whether the image is a negative ("No finding"), where the labels alone do not say it (RSNA: an image
    #: without pneumonia may still be abnormal); None: a negative is an image without labels.
    negative: bool | None = None

    @property
    def no_finding(self) -> bool:
        return (not self.labels) if self.negative is None else self.negative

    @property
    def annotated(self) -> bool:
        """True when the image has at least one box."""
        return bool(self.boxes)

    @property
    def box_labels(self) -> tuple[str, ...]:
        """The distinct labels of this image's boxes (NIH's in LABELS order, others after them by name)."""
        present = {b.label for b in self.boxes}
        return tuple(sorted(present, key=lambda lab: (LABEL_TO_INDEX.get(lab, len(LABELS)), lab)))


def read_pool_only(root: Path, index: ImageIndex) -> frozenset[str]:
    """The names in ``root``/:data:`POOL_ONLY_FILE` (empty without the file). InputError naming the file when
    it lists an image the index lacks or one with a finding (a pool-only image is a negative)."""

    path = Path(root) / POOL_ONLY_FILE
    if not path.is_file():
        return frozenset()
    try:
        names = frozenset(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    unknown = sorted(n for n in names if n not in index)
    if unknown:
        raise InputError(f"{path}: {len(unknown)} names are not images of the data set: {few(unknown)}")
    positive = sorted(n for n in names if not index[n].no_finding)
    if positive:
        raise InputError(f"{path}: {len(positive)} pool-only images are not No Finding: {few(positive)}")
    return names


def few(names: Iterable[str]) -> str:
    """The first few of ``names`` for an error message."""
    names = list(names)
    shown = ", ".join(names[:NAMES_IN_ERRORS])
    return shown + (", ..." if len(names) > NAMES_IN_ERRORS else "")


def attach_paths(
    root: Path,
    records: Sequence[ImageRecord],
    what: str,
    images_required: bool = False,
    strict: bool = False,
    scan_root: Path | None = None,
) -> int:
    """Set each record's ``path`` to its file below ``scan_root`` (default ``root``); returns the number of
    duplicate files ignored. A file with the record's stem and another image extension is taken when the
    exact name is absent (a PNG re-encoding of a DICOM). ``what`` names the metadata file in errors."""
    files, duplicates = scan_images(scan_root or root)
    stems: dict[str, Path] | None = None
    for rec in records:
        rec.path = files.get(rec.name)
        if rec.path is None and files:
            if stems is None:
                stems = {}
                for fname, fpath in files.items():
                    stems.setdefault(os.path.splitext(fname)[0], fpath)
            rec.path = stems.get(os.path.splitext(rec.name)[0])
    missing = [r.name for r in records if r.path is None]
    if images_required and records and len(missing) == len(records):
        raise MissingPathError(f"{root}: none of the {len(records)} images of {what} found below it")
    if strict and missing:
        raise MissingPathError(f"{root}: {len(missing)} of {len(records)} image files missing: {few(missing)}")
    return duplicates


class ImageIndex:
    """All images of a data root, in the order of its metadata file.

    ``records[i]`` is an ImageRecord; ``index[name]`` looks one up by file name; ``label_set`` holds the data
    set's classes (the columns of :meth:`label_matrix` and of a model trained on it); ``dataset`` names the
    adapter that read it ("nih", "rsna", "vindr", "csv"); ``facts`` holds layout-specific counts for
    :meth:`summary` (rows, readers, the reader-box merge). ``pool_only``: the names of :data:`POOL_ONLY_FILE`
    (read from the root when not given; empty without the file), No Finding images of the index that serve
    only as negatives (``cianet.run.protocol`` keeps them out of every split).
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
        label_set: LabelSet = NIH_LABEL_SET,
        dataset: str = NIH,
        facts: dict[str, Any] | None = None,
        pool_only: Iterable[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.records = records
        self.official_train_val = official_train_val
        self.official_test = official_test
        self.entry_csv = entry_csv  # the image-level table
        self.bbox_csv = bbox_csv  # the box table (the same file where one table holds both)
        self.orphan_boxes = orphan_boxes  # boxes whose image is not in the entry CSV (skipped)
        self.duplicate_files = duplicate_files  # image files found twice under the root (first kept)
        self.files_scanned = files_scanned
        self.label_set = label_set
        self.dataset = dataset
        self.facts = dict(facts or {})
        self._by_name = {r.name: i for i, r in enumerate(records)}
        self.pool_only: frozenset[str] = read_pool_only(self.root, self) if pool_only is None else frozenset(pool_only)

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

    def restrict(self, names: Iterable[str]) -> ImageIndex:
        """A new index over only ``names`` (records shared, metadata order kept)."""
        keep = set(names)
        unknown = keep - self._by_name.keys()
        if unknown:
            raise KeyError(f"{len(unknown)} names not in the index of {self.root}: {few(sorted(unknown))}")
        return type(self)(
            self.root,
            [r for r in self.records if r.name in keep],
            official_train_val=self.official_train_val,
            official_test=self.official_test,
            entry_csv=self.entry_csv,
            bbox_csv=self.bbox_csv,
            orphan_boxes=self.orphan_boxes,
            duplicate_files=self.duplicate_files,
            files_scanned=self.files_scanned,
            label_set=self.label_set,
            dataset=self.dataset,
            facts=self.facts,
            pool_only=self.pool_only & keep,
        )

    def without_pool_only(self) -> ImageIndex:
        """This index without its pool-only images (itself when it has none): what splits are made from."""
        return self.restrict(n for n in self.names() if n not in self.pool_only) if self.pool_only else self

    def present(self) -> list[str]:
        """Names whose image file was found."""
        return [r.name for r in self.records if r.path is not None]

    def missing(self) -> list[str]:
        """Names whose image file was not found (empty when files were not scanned)."""
        return [r.name for r in self.records if r.path is None] if self.files_scanned else []

    def annotated_names(self) -> list[str]:
        return [r.name for r in self.records if r.annotated]

    def patients(self) -> dict[str, list[str]]:
        """patient id -> names of that patient's images (metadata order)."""
        out: dict[str, list[str]] = {}
        for r in self.records:
            out.setdefault(r.patient_id, []).append(r.name)
        return out

    def label_matrix(self, names: Sequence[str] | None = None) -> np.ndarray:
        """(N, C) float32 0/1 matrix in the label set's column order; rows follow ``names`` (default: all)."""
        recs = self.records if names is None else self.subset(names)
        out = np.zeros((len(recs), len(self.label_set)), dtype=np.float32)  # (N, C)
        for i, r in enumerate(recs):
            for lab in r.labels:
                out[i, self.label_set.index(lab)] = 1.0
        return out

    def summary(self) -> dict:
        """Counts describing the index (JSON-serializable)."""
        names = self.label_set.names
        per_label = Counter(lab for r in self.records for lab in r.labels)
        box_counts = Counter(b.label for r in self.records for b in r.boxes)
        views = Counter(r.view for r in self.records if r.view)
        box_names = set(self.label_set.box_names)
        out = {
            "dataset": self.dataset,
            "root": str(self.root),
            "entry_csv": self.entry_csv.name if self.entry_csv else None,
            "bbox_csv": self.bbox_csv.name if self.bbox_csv else None,
            "images": len(self.records),
            "patients": len({r.patient_id for r in self.records}),
            "no_finding": sum(r.no_finding for r in self.records),
            "annotated_images": sum(r.annotated for r in self.records),
            "boxes": sum(box_counts.values()),
            "boxes_per_class": {lab: box_counts[lab] for lab in names if lab in box_names or box_counts[lab]},
            "per_label": {lab: per_label[lab] for lab in names},
            "classes": len(names),
            "views": dict(sorted(views.items())),
            "files_scanned": self.files_scanned,
            "found_files": len(self.present()),
            "missing_files": len(self.missing()),
            "duplicate_files": self.duplicate_files,
            "orphan_boxes": self.orphan_boxes,
            "official_train_val": None if self.official_train_val is None else len(self.official_train_val),
            "official_test": None if self.official_test is None else len(self.official_test),
            "pool_only": len(self.pool_only),
        }
        out.update(self.prior_summary())
        out.update(self.facts)
        return out

    def prior_summary(self) -> dict:
        """``cianet.data.priors.prior_counts`` where the data set has follow-up numbers; otherwise every count
        None and ``priors_note`` saying why (RSNA, VinDr-CXR, a CSV without a ``follow_up`` column)."""
        if any(r.follow_up is not None for r in self.records):
            return dict(prior_counts(self.records))
        out: dict[str, Any] = {k: None for k in PRIOR_COUNT_KEYS}
        out["priors_note"] = (
            f"the {self.dataset} layout gives no follow-up numbers of a patient's studies: no prior studies"
        )
        return out

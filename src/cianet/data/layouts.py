"""One entry point to every data-set layout: ``open_index(root, dataset)`` reads a data root with the
adapter of ``dataset`` (``nih``, ``rsna``, ``vindr``, ``csv``) or, with ``auto``, of the layout its files show.

Every adapter returns a :class:`~cianet.data.index.ImageIndex`; ``entry_csv`` / ``bbox_csv`` name the
image-level and box tables where the standard names do not fit (RSNA and VinDr-CXR keep both in one file,
named by ``entry_csv``).
"""

from __future__ import annotations

import os
from pathlib import Path

from cianet.config import AUTO_DATASET as AUTO
from cianet.config import CSV, DATASETS, NIH, RSNA, VINDR
from cianet.data import generic_csv, nih, rsna, vindr
from cianet.data.box_merge import DEFAULT_MERGE, DEFAULT_MERGE_IOU
from cianet.data.generic_csv import csv_index
from cianet.data.index import ImageIndex
from cianet.data.label_maps import map_index
from cianet.data.nih import NIHIndex
from cianet.data.rsna import rsna_index
from cianet.data.tables import find_metadata_file, paused_gc, read_rows
from cianet.data.vindr import vindr_index
from cianet.errors import InputError, MissingPathError


def _looks_like_vindr(path: Path) -> bool:
    try:
        header = next(read_rows(path))[1]
    except (StopIteration, ValueError, OSError):
        return False
    cells = {c.strip() for c in header}
    return {"image_id", "class_name", "x_min"} <= cells


def detect_dataset(root: str | os.PathLike) -> str:
    """The layout of the data root ``root`` from its metadata files: the one whose standard files are there,
    else ``nih`` (the default layout, whose reader then names the files it misses); ValueError when the files
    of several layouts are there."""
    root = Path(root)
    found = []
    if find_metadata_file(root, nih.ENTRY_CSV_NAMES) is not None:
        found.append(NIH)
    if rsna.find_labels_csv(root) is not None:
        found.append(RSNA)
    train = vindr.find_train_csv(root)
    if train is not None and _looks_like_vindr(train):
        found.append(VINDR)
    if find_metadata_file(root, (generic_csv.IMAGES_CSV,)) is not None:
        found.append(CSV)
    if len(found) == 1:
        return found[0]
    if not found:
        return NIH
    raise InputError(f"{root}: the files of several layouts are there ({', '.join(found)}); pass --dataset")


def check_dataset(name: str) -> str:
    if name not in DATASETS + (AUTO,):
        raise InputError(f"unknown data set {name!r}: expected one of {', '.join(DATASETS + (AUTO,))}")
    return name


@paused_gc()  # a table's worth of records and boxes, no cycles among them (cianet.data.tables.paused_gc)
def open_index(
    data_root: str | os.PathLike,
    dataset: str = AUTO,
    *,
    strict: bool = False,
    images_required: bool = False,
    entry_csv: str | os.PathLike | None = None,
    bbox_csv: str | os.PathLike | None = None,
    scan: bool = True,
    box_merge: str = DEFAULT_MERGE,
    merge_iou: float = DEFAULT_MERGE_IOU,
    label_map: str | None = None,
) -> ImageIndex:
    """The index of ``data_root`` read by the adapter of ``dataset`` ("auto": :func:`detect_dataset`), its
    classes mapped by ``label_map`` ("nih": ``cianet.data.label_maps``) when given.

    Raises FileNotFoundError / ValueError naming the file and the problem (the commands map them to exit 2).
    """
    check_dataset(dataset)
    if label_map is not None:
        index = open_index(
            data_root,
            dataset,
            strict=strict,
            images_required=images_required,
            entry_csv=entry_csv,
            bbox_csv=bbox_csv,
            scan=scan,
            box_merge=box_merge,
            merge_iou=merge_iou,
        )
        return map_index(index, label_map)
    root = Path(data_root)
    if not root.is_dir():
        raise MissingPathError(f"data root {root} is not a folder")
    if dataset == AUTO:
        dataset = detect_dataset(root)
    common = {"strict": strict, "images_required": images_required, "scan": scan}
    if dataset == NIH:
        return NIHIndex.from_root(root, entry_csv=entry_csv, bbox_csv=bbox_csv, **common)
    if bbox_csv is not None and dataset in (RSNA, VINDR):
        raise InputError(
            f"--bbox-csv does not apply to the {dataset} layout (its boxes are in the label table; "
            "name that with --entry-csv)"
        )
    if dataset == RSNA:
        return rsna_index(root, labels_csv=entry_csv, **common)
    if dataset == VINDR:
        return vindr_index(root, train_csv=entry_csv, box_merge=box_merge, merge_iou=merge_iou, **common)
    return csv_index(root, images_csv=entry_csv, boxes_csv=bbox_csv, box_merge=box_merge, merge_iou=merge_iou, **common)

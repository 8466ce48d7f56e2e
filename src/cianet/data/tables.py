"""Reading the metadata tables of chest X-ray data sets: CSV files plain, gzipped or zipped, and finding image
files below a data root. Shared by every data-set adapter (``cianet.data.nih``, ``rsna``, ``vindr``,
``generic_csv``).
"""

from __future__ import annotations

import contextlib
import csv
import gc
import gzip
import io
import math
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from cianet.errors import InputError, MissingPathError

#: File extensions taken for images while scanning the root (matched case-insensitively); ``.dicom`` is
#: VinDr-CXR's spelling.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})

#: Suffixes a metadata file may carry beyond its own name, tried in this order.
COMPRESSED_SUFFIXES: tuple[str, ...] = ("", ".gz", ".zip")


def find_metadata_file(root: Path, names: Sequence[str], suffixes: Sequence[str] = ("", ".gz")) -> Path | None:
    """The first of ``names`` (each tried with every suffix of ``suffixes``) present in ``root``, else None."""
    for name in names:
        for suffix in suffixes:
            candidate = root / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def open_text(path: Path) -> io.TextIOBase:
    """Open a plain, gzipped or single-member zipped text file (detected by magic bytes, not by name)."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    if magic == b"PK\x03\x04":
        archive = zipfile.ZipFile(path)
        members = [m for m in archive.namelist() if not m.endswith("/")]
        if len(members) != 1:
            archive.close()
            raise InputError(f"{path}: a zipped table must hold exactly one file, found {len(members)}")
        return io.TextIOWrapper(archive.open(members[0]), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Hold off Python's cycle collector while a reader builds a table's worth of objects: they form no cycles,
    yet as they pile up the collector passes over them (and, in a torch process, over everything else it holds)
    again and again: building the 112,120 NIH records took four times as long with it running."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` of a CSV file, skipping blank lines; errors name the file."""
    try:
        with open_text(path) as fh:
            reader = csv.reader(fh)
            try:
                for row in reader:
                    if row and any(cell.strip() for cell in row):
                        yield reader.line_num, row
            except csv.Error as exc:
                raise InputError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from exc
    except (OSError, EOFError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise MissingPathError(f"{path}: no such file") from exc
        raise InputError(f"{path}: cannot read ({exc})") from exc


def header_of(rows: Iterator[tuple[int, list[str]]], path: Path, what: str) -> list[str]:
    """The first row of ``rows`` (ValueError naming the file when it is empty)."""
    try:
        return next(rows)[1]
    except StopIteration:
        raise InputError(f"{path}: empty file, expected a {what} CSV header") from None


def column(header: list[str], wanted: str, path: Path, exact: bool = False) -> int:
    """Index of the header cell equal to (``exact``) or starting with ``wanted`` (NIH headers split
    ``[x,y]`` over cells); ValueError naming the file when there is none."""
    for i, cell in enumerate(header):
        cell = cell.strip()
        if cell == wanted or (not exact and cell.startswith(wanted)):
            return i
    raise InputError(f"{path}: line 1: malformed header, no column {wanted!r} (header: {','.join(header)})")


def optional_column(header: list[str], wanted: str) -> int | None:
    """Index of the header cell equal to ``wanted``, else None."""
    for i, cell in enumerate(header):
        if cell.strip() == wanted:
            return i
    return None


def cell(row: list[str], i: int | None) -> str:
    """Stripped cell ``i`` of ``row``, "" when the column is absent or the row is short."""
    return row[i].strip() if i is not None and i < len(row) else ""


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
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:  # a symlink pointing at itself (ELOOP) or another unreadable entry: skipped
                continue
            if is_dir:
                subdirs.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                if entry.name in found:
                    duplicates += 1
                else:
                    found[entry.name] = Path(entry.path)
        stack.extend(reversed(subdirs))  # depth first, in sorted order
    return found, duplicates


def parse_xywh(texts: Sequence[str], path: Path, line: int) -> tuple[float, float, float, float]:
    """A box ``x, y, w, h`` read from four cells of line ``line`` of ``path``: finite, with ``w, h > 0``."""
    try:
        x, y, w, h = (float(t) for t in texts)
    except ValueError:
        raise InputError(f"{path}: line {line}: box {list(texts)} is not four numbers") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise InputError(f"{path}: line {line}: invalid box x={x} y={y} w={w} h={h} (need finite, w, h > 0)")
    return x, y, w, h


def locate_table(root: Path, given: str | os.PathLike | None, find, what: str, missing_hint: str) -> Path:
    """The metadata table of a data root: ``given`` (relative to ``root`` or absolute) when named, else what
    ``find(root)`` finds. ``what`` names the table in errors; ``missing_hint`` says what the layout expects."""
    if not root.is_dir():
        raise MissingPathError(f"data root {root} is not a folder")
    path = resolve_path(root, given)
    if path is None:
        path = find(root)
        if path is None:
            raise MissingPathError(f"{root}: {missing_hint}")
    elif not path.is_file():
        raise MissingPathError(f"{path}: {what} not found")
    return path


def resolve_path(root: Path, override: str | os.PathLike | None) -> Path | None:
    """``override`` (a metadata file named on the command line) relative to ``root`` unless absolute."""
    if override is None:
        return None
    p = Path(override)
    return p if p.is_absolute() else root / p

"""Which files are images to predict: the one list of suffixes, and a folder's image files."""

from __future__ import annotations

from pathlib import Path

from cianet.data.io import is_dicom

#: file suffixes read as images (any case); extension-less files are taken when they are DICOM
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})


def is_image_file(path: Path) -> bool:
    """A file with an image suffix, or without a suffix but holding DICOM."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    if suffix:
        return False
    try:
        return is_dicom(path)
    except ValueError:
        return False


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, hidden files and folders left out), in path order."""
    folder = Path(folder)
    return [
        f
        for f in sorted(folder.rglob("*"))
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts) and is_image_file(f)
    ]

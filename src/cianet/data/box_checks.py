"""Checks of a data set's boxes against their image and its labels (``cianet index --strict``).

A box that lies entirely outside its image, has no area, or names a finding its image does not carry is a
data error: training would learn from it silently. The image size is read from the file's header only
(no decoding; DICOM too), so checking the ~1,000 annotated NIH images takes a second. Every adapter (NIH,
RSNA, VinDr-CXR, CSV) runs these checks when it reads a data root: an error with ``--strict``, else one
warning line on stderr naming the first few bad boxes.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable

from cianet.data.index import few
from cianet.data.io import XrayReadError, read_image_size
from cianet.errors import InputError


def box_problems(records: Iterable) -> list[str]:
    """One line per bad box of ``records`` (ImageRecord: name, labels, boxes, path)."""
    problems: list[str] = []
    for rec in records:
        if not rec.boxes:
            continue
        size = None
        if rec.path is not None:
            try:
                size = read_image_size(rec.path)
            except (XrayReadError, OSError, ValueError):
                size = None  # unreadable files are reported by the image checks, not here
        for b in rec.boxes:
            where = f"{rec.name}: {b.label} box ({b.x:g}, {b.y:g}, {b.w:g}, {b.h:g})"
            if not all(math.isfinite(v) for v in (b.x, b.y, b.w, b.h)) or b.w <= 0 or b.h <= 0:
                problems.append(f"{where} has no area")
            elif b.label not in rec.labels:
                problems.append(
                    f"{where} names a finding the image does not have ({'|'.join(rec.labels) or 'No Finding'})"
                )
            elif size is not None and not inside_image(b, size):
                problems.append(f"{where} lies outside the {size[0]}x{size[1]} image")
    return problems


#: pixels by which a box may be larger than its image (annotation tools round their corners)
EDGE_TOLERANCE = 1.0
#: the least share of a box's area that must lie on its image (a box cut by the edge is fine; one mostly
#: beyond it is not)
MIN_INSIDE_SHARE = 0.25


def inside_image(box, size: tuple[int, int]) -> bool:
    """Whether ``box`` lies on the ``(W, H)`` image: no larger than the image and at least
    ``MIN_INSIDE_SHARE`` of it inside. (100, 100, 99999, 99999) on a 1024 px image is a data error even though
    a corner of it covers the image."""
    if box.w > size[0] + EDGE_TOLERANCE or box.h > size[1] + EDGE_TOLERANCE:
        return False
    iw = min(box.x + box.w, size[0]) - max(box.x, 0.0)
    ih = min(box.y + box.h, size[1]) - max(box.y, 0.0)
    return iw > 0 and ih > 0 and iw * ih >= MIN_INSIDE_SHARE * box.w * box.h - 1e-9


def check_boxes(records: Iterable, where: str, strict: bool) -> int:
    """Run :func:`box_problems` on ``records``: with ``strict`` a ValueError naming ``where`` (the box table)
    and the first bad boxes, else one warning line on stderr; returns the number of bad boxes."""
    bad = box_problems(records)
    if bad and strict:
        raise InputError(f"{where}: {len(bad)} bad boxes: {few(bad)}")
    if bad:
        print(
            f"warning: {where}: {len(bad)} bad boxes (kept): {few(bad)} (--strict makes this an error)", file=sys.stderr
        )
    return len(bad)

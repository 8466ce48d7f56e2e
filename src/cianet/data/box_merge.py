"""Merging several readers' boxes of the same finding (VinDr-CXR: three radiologists per image).

Rule (docs/method.md, "Multi-reader boxes"): on one image, boxes of one class whose IoU is at least
``iou`` are linked, and each connected group (single linkage, so the result does not depend on the order
of the rows) becomes one box:

* ``mean``  (default): the coordinate-wise mean of the group's corners, the consensus extent;
* ``union``: the smallest box enclosing the group;
* ``none``:  no merging, every reader's box is kept (each finding then counts once per reader).

A merged box records in ``readers`` how many boxes it was made of.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cianet.data.index import Box

MERGE_RULES: tuple[str, ...] = ("mean", "union", "none")
DEFAULT_MERGE = "mean"
DEFAULT_MERGE_IOU = 0.4


def check_merge(rule: str, iou: float) -> None:
    """ValueError naming the bad setting (``data.box_merge`` / ``data.merge_iou``)."""
    if rule not in MERGE_RULES:
        raise ValueError(f"box merge rule {rule!r} is not one of {', '.join(MERGE_RULES)}")
    if not (isinstance(iou, (int, float)) and 0.0 < float(iou) <= 1.0):
        raise ValueError(f"box merge IoU must be in (0, 1], got {iou!r}")


def pairwise_iou(xyxy: np.ndarray) -> np.ndarray:
    """(n, n) IoU of boxes given as (n, 4) ``x0, y0, x1, y1`` rows."""
    x0, y0, x1, y1 = (xyxy[:, i] for i in range(4))
    iw = np.maximum(np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]), 0.0)
    ih = np.maximum(np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]), 0.0)
    inter = iw * ih
    area = (x1 - x0) * (y1 - y0)
    union = area[:, None] + area[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _groups(xyxy: np.ndarray, iou: float) -> list[list[int]]:
    """Connected groups of the graph "IoU >= iou", each sorted, ordered by their first member."""
    n = len(xyxy)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    linked = (pairwise_iou(xyxy) >= iou - 1e-12).tolist()  # tolerance: a pair at exactly the threshold links
    for i in range(n):  # a group is a reader's few boxes: plain loops beat array calls
        for j in range(i + 1, n):
            if linked[i][j]:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    out: dict[int, list[int]] = {}
    for i in range(n):
        out.setdefault(find(i), []).append(i)
    return sorted(out.values(), key=lambda g: g[0])


def merge_boxes(boxes: Sequence[Box], rule: str = DEFAULT_MERGE, iou: float = DEFAULT_MERGE_IOU) -> list[Box]:
    """The boxes of one image after merging by ``rule`` (see the module docstring); classes in order of their
    first box, groups in order of their first member."""
    check_merge(rule, iou)
    if rule == "none" or len(boxes) < 2:
        return list(boxes)
    by_class: dict[str, list[Box]] = {}
    for b in boxes:
        by_class.setdefault(b.label, []).append(b)
    out: list[Box] = []
    for label, group in by_class.items():
        if len(group) == 1:  # nothing to merge (most classes of an image): spare the arrays
            out.append(group[0])
            continue
        xyxy = np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for b in group], dtype=np.float64)
        for members in _groups(xyxy, iou):
            if len(members) == 1:
                out.append(group[members[0]])
                continue
            part = xyxy[members]
            if rule == "mean":
                x0, y0, x1, y1 = part.mean(axis=0)
            else:
                x0, y0 = part[:, :2].min(axis=0)
                x1, y1 = part[:, 2:].max(axis=0)
            out.append(
                Box(
                    label,
                    float(x0),
                    float(y0),
                    float(x1 - x0),
                    float(y1 - y0),
                    readers=sum(group[m].readers for m in members),
                )
            )
    return out

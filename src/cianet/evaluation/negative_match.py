"""How well do a run's negatives match its test images? The pixel residual outside the findings.

CIA-Net's attention is ``|M+ - M-|``: wherever the negative differs from the image for reasons other than a
finding (another anatomy, pose, exposure), the contrast is noise. :func:`negative_match` measures that noise
directly: the mean absolute difference between each test image and its negative, both as the network sees them
(aligned by the run's alignment network when it aligns; gray values in [0, 1]), over the pixels outside the
image's boxes. No Finding test images have no finding at all, so their residual is pure mismatch; it is
reported apart from the images with a finding (whose findings without a box, if any, count as mismatch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cianet.errors import UsageError
from cianet.evaluation.evaluate import load_run
from cianet.run.forward import align_batch


def masked_residual(image: np.ndarray, negative: np.ndarray, boxes: np.ndarray) -> float | None:
    """Mean ``|image - negative|`` over the pixels of ``(S, S)`` arrays outside every ``(x, y, w, h)`` box
    (pixel ``(i, j)`` is inside when its centre ``(j + 0.5, i + 0.5)`` lies in the box); None when no pixel
    is left."""
    keep = np.ones(image.shape, dtype=bool)
    ys, xs = np.arange(image.shape[0]) + 0.5, np.arange(image.shape[1]) + 0.5
    for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        rows = (ys >= y) & (ys < y + h)
        cols = (xs >= x) & (xs < x + w)
        keep[np.ix_(rows, cols)] = False
    if not keep.any():
        return None
    return float(np.abs(image.astype(np.float64) - negative.astype(np.float64))[keep].mean())


def negative_match(run_dir: str | Path, device: str = "cpu") -> dict[str, Any]:
    """The residual of a CIA-Net run's test images against their negatives (see the module docstring):
    ``{"no_finding": {"mean", "median", "n"}, "with_finding": {...}, "aligned": bool, "strategy": str}``."""
    run = load_run(run_dir, device=device)
    if run.cfg.model.kind != "cianet":
        raise UsageError(f"{run_dir}: a {run.cfg.model.kind} run has no negatives to match")
    groups: dict[str, list[float]] = {"no_finding": [], "with_finding": []}
    with torch.no_grad():
        for batch in run.test_loader:
            batch = align_batch(run.align_net, {k: v.to(run.device) for k, v in batch.items()})
            images, negs = batch["image"][:, 0].cpu().numpy(), batch["neg"][:, 0].cpu().numpy()
            for b in range(images.shape[0]):
                rows = batch["boxes"][b]
                boxes = rows[rows[:, 0] >= 0][:, 1:].cpu().numpy()
                r = masked_residual(images[b], negs[b], boxes)
                if r is not None:
                    key = "with_finding" if float(batch["labels"][b].sum()) > 0 else "no_finding"
                    groups[key].append(r)

    def stats(values: list[float]) -> dict[str, Any]:
        arr = np.asarray(values)
        return {
            "mean": float(arr.mean()) if len(arr) else None,
            "median": float(np.median(arr)) if len(arr) else None,
            "n": int(len(arr)),
        }

    return {
        **{k: stats(v) for k, v in groups.items()},
        "aligned": run.align_net is not None,
        "strategy": run.cfg.negatives.strategy,
    }

"""bfloat16 against float32 prediction with one bundle on folders of X-rays: how far apart are the results?

    python -m cianet.bench.precision_check --bundle model.cianet DIR [DIR ...] [--limit N] [--json]

For every image (``Predictor`` in ``fp32`` and in ``bf16``, same bundle, same images, bank mode):

- probabilities: the largest and the mean absolute difference over images x 14 classes;
- heatmaps: the largest absolute difference of a test-grid cell probability;
- boxes: for each (image, box class) where either precision reports a box, the IoU of the two predictions'
  box regions (the union of the class's boxes, rasterized in the image file's frame); their mean, and the
  share of (image, box class) pairs where the two agree on whether there is a box at all.

Tolerances (docs/performance.md): max |dp| <= 0.05, mean |dp| <= 0.01, mean box-region IoU >= 0.9 and box
presence agreement >= 0.95. ``within_tolerance`` says whether all four hold. bfloat16 keeps 8 bits of
mantissa: a logit moves by a few hundredths through the network, a probability by at most a quarter of that.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cianet.data.io import XrayReadError, load_xray
from cianet.inference.predictor import Predictor

MAX_PROB_DIFF = 0.05
MEAN_PROB_DIFF = 0.01
MIN_BOX_IOU = 0.9
MIN_BOX_AGREEMENT = 0.95


def region_iou(a: Sequence[Any], b: Sequence[Any], size: tuple[int, int], scale: float = 0.25) -> float:
    """IoU of the unions of boxes ``a`` and ``b`` (objects with x, y, w, h) rasterized on the ``(W, H)`` frame
    downscaled by ``scale`` (1.0 when both are empty)."""
    w, h = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))

    def mask(boxes) -> np.ndarray:
        m = np.zeros((h, w), bool)
        for bx in boxes:
            x0, y0 = int(np.floor(bx.x * scale)), int(np.floor(bx.y * scale))
            x1, y1 = int(np.ceil((bx.x + bx.w) * scale)), int(np.ceil((bx.y + bx.h) * scale))
            m[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)] = True
        return m

    ma, mb = mask(a), mask(b)
    union = np.logical_or(ma, mb).sum()
    return 1.0 if union == 0 else float(np.logical_and(ma, mb).sum() / union)


def compare(bundle: str | Path, files: Sequence[Path], batch: int = 8, device: str = "cpu") -> dict[str, Any]:
    """The comparison of the module docstring over ``files`` (unreadable ones are skipped and counted)."""
    preds = {p: Predictor.from_bundle(bundle, device=device, precision=p, batch_size=batch) for p in ("fp32", "bf16")}
    diffs, heat, ious, agree, skipped = [], 0.0, [], [], 0
    for i in range(0, len(files), batch):
        images, names = [], []
        for f in files[i : i + batch]:
            try:
                images.append(load_xray(f))
                names.append(str(f))
            except (XrayReadError, OSError):
                skipped += 1
        if not images:
            continue
        r32, r16 = (preds[p].predict_arrays(images, names) for p in ("fp32", "bf16"))
        for a, b in zip(r32, r16):
            diffs.append(np.abs(np.array(list(a.probabilities.values())) - np.array(list(b.probabilities.values()))))
            heat = max(heat, float(np.abs(a.heatmaps - b.heatmaps).max()))
            for lab in preds["fp32"].box_labels:
                ba = [x for x in a.boxes if x.label == lab]
                bb = [x for x in b.boxes if x.label == lab]
                if not ba and not bb:
                    continue
                agree.append(bool(ba) == bool(bb))
                ious.append(region_iou(ba, bb, a.image_size))
    d = np.stack(diffs) if diffs else np.zeros((0, 1))
    out = {
        "images": int(len(d)),
        "skipped": skipped,
        "max_prob_diff": float(d.max()) if d.size else None,
        "mean_prob_diff": float(d.mean()) if d.size else None,
        "max_heatmap_diff": heat if diffs else None,
        "box_pairs": len(ious),
        "mean_box_iou": float(np.mean(ious)) if ious else None,
        "min_box_iou": float(np.min(ious)) if ious else None,
        "box_presence_agreement": float(np.mean(agree)) if agree else None,
        "precision_bf16": preds["bf16"].precision,
    }
    out["within_tolerance"] = bool(
        d.size
        and out["max_prob_diff"] <= MAX_PROB_DIFF
        and out["mean_prob_diff"] <= MEAN_PROB_DIFF
        and (not ious or (out["mean_box_iou"] >= MIN_BOX_IOU and out["box_presence_agreement"] >= MIN_BOX_AGREEMENT))
    )
    return out


def image_files(folder: Path, limit: int | None) -> list[Path]:
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm"))
    return files[:limit] if limit else files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="folders of X-ray images (searched recursively)")
    p.add_argument("--bundle", required=True, help="model bundle (`cianet bundle`)")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per folder")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    args = p.parse_args(argv)
    result: dict[str, Any] = {
        "bundle": Path(args.bundle).name,
        "tolerances": {
            "max_prob_diff": MAX_PROB_DIFF,
            "mean_prob_diff": MEAN_PROB_DIFF,
            "mean_box_iou": MIN_BOX_IOU,
            "box_presence_agreement": MIN_BOX_AGREEMENT,
        },
        "folders": {},
    }
    for folder in args.folders:
        if not folder.is_dir():
            print(f"precision_check: {folder}: no such folder", file=sys.stderr)
            return 2
        r = compare(args.bundle, image_files(folder, args.limit), args.batch, args.device)
        key = f"{folder.resolve().parent.name}/{folder.name}"  # phantom/images, nih-chestxray14/images
        result["folders"][key] = r
        if not args.json:
            print(
                f"{key}: {r['images']} images, max |dp| {r['max_prob_diff']}, mean |dp| "
                f"{r['mean_prob_diff']}, max heatmap diff {r['max_heatmap_diff']}, box regions: {r['box_pairs']} "
                f"pairs, mean IoU {r['mean_box_iou']}, presence agreement {r['box_presence_agreement']}: "
                f"{'within' if r['within_tolerance'] else 'OUTSIDE'} tolerance"
            )
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

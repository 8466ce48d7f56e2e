"""Standard outputs of ``cianet predict``: heatmaps in the image file's frame and COCO-style detection files.

- ``<stem>.heatmaps.npz``: the box classes' cell probabilities and the contrast attention ``dM``, mapped
  through the alignment into the pixel frame of the image file (``cianet.models.alignment.mask_to_original``),
  at most ``HEATMAP_MAX_SIDE`` pixels on the longest side. Keys: ``heatmaps`` (C, H', W') float16 in [0, 1],
  ``labels`` (C,) class names, ``attention`` (H', W') float16 (absent for the baseline), ``image_size`` (W, H)
  of the file, ``scale`` = W' / W.
- ``coco.json``: a COCO detection data set of the predictions (``images``, ``categories`` with all 14 classes,
  ``annotations`` with a ``score``), the layout FiftyOne and CVAT import; ``coco_results.json``: the same boxes
  as a COCO results list (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``), what
  ``pycocotools.COCO.loadRes`` reads. Category ids are 1-based positions in ``cianet.labels.LABELS``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cianet.inference.predictor import PredictionResult
from cianet.models.alignment import IDENTITY_PARAMS, masks_to_original
from cianet.utils.atomic import atomic_path

HEATMAP_MAX_SIDE = 512


def float16(arr: np.ndarray) -> np.ndarray:
    """``arr.astype(np.float16)``, bit for bit, through torch: numpy converts small values (float16 subnormals,
    which near-zero probabilities are) one at a time in software, 25x slower on a 512 px heatmap stack."""
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(torch.float16).numpy()


def frame_size(image_size: Sequence[int], max_side: int = HEATMAP_MAX_SIDE) -> tuple[int, int]:
    """``(W', H')``: the image size ``(W, H)`` scaled down so that its longest side is at most ``max_side``."""
    w, h = int(image_size[0]), int(image_size[1])
    f = min(1.0, max_side / max(w, h))
    return max(1, round(w * f)), max(1, round(h * f))


def heatmaps_in_image_frame(
    result: PredictionResult, box_labels: Sequence[str], max_side: int = HEATMAP_MAX_SIDE
) -> dict[str, Any]:
    """The arrays of ``<stem>.heatmaps.npz`` (see the module docstring) for one prediction."""
    params = result.align_params if result.align_params is not None else IDENTITY_PARAMS
    size = frame_size(result.image_size, max_side)
    # the box classes' heatmaps share one grid (the test grid): one pixel-to-cell mapping for all of them
    heat = masks_to_original(np.asarray(result.heatmaps[: len(box_labels)], np.float32), params, size)
    out: dict[str, Any] = {
        "heatmaps": float16(np.clip(heat, 0.0, 1.0)),
        "labels": np.asarray(list(box_labels)),
        "image_size": np.asarray(result.image_size, dtype=np.int64),
        "scale": np.float64(size[0] / result.image_size[0]),
    }
    if result.attention is not None:
        att = masks_to_original(np.asarray(result.attention, np.float32)[None], params, size)[0]
        out["attention"] = float16(att)
    return out


def write_heatmaps(path: str | Path, result: PredictionResult, box_labels: Sequence[str]) -> None:
    """Write ``<stem>.heatmaps.npz`` atomically (compressed)."""
    arrays = heatmaps_in_image_frame(result, box_labels)
    with atomic_path(path) as tmp:
        # np.savez_compressed's layout (a zip of .npy files, what np.load reads) at deflate level 1: half the
        # time of its default level 6 for a quarter more bytes, on 512 px heatmaps (measured: 16 vs 34 ms)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            for key, value in arrays.items():
                with z.open(f"{key}.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def read_heatmaps(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a ``<stem>.heatmaps.npz`` (float32)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: (z[k].astype(np.float32) if z[k].dtype == np.float16 else z[k]) for k in z.files}


def coco_categories(labels: Sequence[str]) -> list[dict[str, Any]]:
    """The categories table: ``{"id": position + 1, "name", "supercategory": "finding"}`` for every class."""
    return [{"id": k + 1, "name": lab, "supercategory": "finding"} for k, lab in enumerate(labels)]


def coco_outputs(
    records: Sequence[dict[str, Any]], labels: Sequence[str], info: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(coco.json data set, coco_results.json list)`` of per-image records.

    A record is ``{"file_name", "width", "height", "boxes": [{"label", "x", "y", "w", "h", "score"}]}``;
    images get ids 1, 2, ... in record order.
    """
    cat = {lab: k + 1 for k, lab in enumerate(labels)}
    images, annotations, results = [], [], []
    for i, rec in enumerate(records, start=1):
        images.append(
            {"id": i, "file_name": rec["file_name"], "width": int(rec["width"]), "height": int(rec["height"])}
        )
        for b in rec["boxes"]:
            bbox = [round(float(b[k]), 2) for k in ("x", "y", "w", "h")]
            score = round(float(b["score"]), 6)
            results.append({"image_id": i, "category_id": cat[b["label"]], "bbox": bbox, "score": score})
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": cat[b["label"]],
                    "bbox": bbox,
                    "area": round(bbox[2] * bbox[3], 2),
                    "iscrowd": 0,
                    "score": score,
                }
            )
    dataset = {"info": info, "images": images, "categories": coco_categories(labels), "annotations": annotations}
    return dataset, results

"""Evaluation exactly as the paper (section 4.1, following Li et al. 2018).

- Classification: AUC for all 14 classes; the image score of a class is ``1 - prod_j(1 - p_j)`` over the
  class's cells of the model's native grid (h x w, where the MIL loss was trained).
- Localization, the 8 box classes, at T(IoU) in {0.1, ..., 0.7}: for each ground-truth box the predicted region
  is the union of the class's cells with p > 0.5 on the test-time grid (F_bar upsampled to ``test_upsample``
  before the head, paper 3.3, when the model has it); IoU from exact areas in the image frame; found iff
  IoU > T; an empty prediction is a miss.
- With an alignment network the model sees the aligned image, so its cells are rectangles of the aligned frame.
  Their union is mapped back through the alignment into the original image frame and rasterized there at the
  image file's resolution (cells become rotated quadrilaterals), and IoU is counted in pixels of that frame.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cianet.labels import LABELS, NUM_BOX_CLASSES
from cianet.utils.atomic import atomic_write_json, atomic_write_text
from cianet.utils.progress import progress_bar

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
PREDICTIONS = "predictions.npz"
PREDICTION_KEYS = ("scores", "labels", "ious", "box_classes", "box_images")


def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    *,
    align_net: nn.Module | None = None,
    upsample: bool = True,
    channels_last: bool = False,
    thresholds=THRESHOLDS,
    progress: bool = True,
    keep_predictions: bool = False,
    rescale: bool = False,
) -> dict[str, Any]:
    """Evaluate on ``loader`` (a test or validation loader whose boxes are all the boxes of its images).

    ``rescale``: the run's ``loss.mil_rescale``, so that the image scores are the probabilities the MIL loss
    trained (``image_scores_from_logits(..., rescale)``). ``"names"`` lists the images scored, in order.

    Returns {"auc": {class: auc, "Mean"}, "localization": {"0.1": {class: acc, "Mean"}, ...}, "n_images", "n_boxes"}
    and, with keep_predictions, "scores" (N, 14), "labels" (N, 14) and per-box "ious".
    """
    from cianet.run.forward import align_batch, forward_grids
    from cianet.metrics import accuracy_from_ious, auc_per_class, box_ious, image_scores_from_logits, mask_iou

    model.eval()
    scores, labels, ious, box_cls, box_img, seen = [], [], [], [], [], []
    att_maps, att_boxes = [], []  # CIA-Net: |M+ - M-| of test images with boxes, and their boxes (model frame)
    for batch in progress_bar(loader, desc="evaluate", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        orig_boxes = batch["boxes"]  # (B, K, 5) in the un-aligned S frame
        batch = align_batch(align_net, batch)
        out = forward_grids(model, batch, upsample, channels_last, amp=device.type == "cuda")
        scores.append(image_scores_from_logits(out["logits"], rescale=rescale).cpu().numpy())
        labels.append(batch["labels"].cpu().numpy())
        seen.extend(int(i) for i in batch["index"])
        probs = torch.sigmoid(out["test_logits"][:, :NUM_BOX_CLASSES]).cpu().numpy()  # (B, 8, U, U)
        s = batch["image"].shape[-1]
        for b in range(probs.shape[0]):
            rows = orig_boxes[b][orig_boxes[b, :, 0] >= 0].cpu().numpy()
            rows = rows[rows[:, 0] < NUM_BOX_CLASSES]
            if not len(rows):
                continue
            img_idx = int(batch["index"][b])
            if "delta" in out:
                moved = batch["boxes"][b][batch["boxes"][b, :, 0] >= 0].cpu().numpy()  # aligned when aligning
                att_maps.append(out["delta"][b].cpu().numpy())
                att_boxes.append([tuple(map(float, r[1:])) for r in moved if r[0] < NUM_BOX_CLASSES])
            if align_net is None:
                blist = [(0, int(r[0]), *map(float, r[1:])) for r in rows]
                ious.extend(box_ious(probs[b : b + 1], blist, (s, s)).tolist())
            else:
                from cianet.models.alignment import mask_to_original

                w, h = (int(round(v)) for v in batch["orig_size"][b].tolist())
                params = batch["params"][b].cpu().double().numpy()
                for r in rows:
                    k = int(r[0])
                    region = mask_to_original(probs[b, k] > 0.5, params, (w, h))  # (H, W) bool, file frame
                    fx, fy = w / s, h / s  # S frame -> file frame
                    ious.append(mask_iou(region, (r[1] * fx, r[2] * fy, r[3] * fx, r[4] * fy)))
            box_cls.extend(int(r[0]) for r in rows)
            box_img.extend([img_idx] * len(rows))
    scores_a = np.concatenate(scores) if scores else np.zeros((0, len(LABELS)))
    labels_a = np.concatenate(labels) if labels else np.zeros((0, len(LABELS)))
    ious_a, cls_a = np.asarray(ious, dtype=np.float64), np.asarray(box_cls, dtype=np.int64)
    result: dict[str, Any] = {
        "auc": auc_per_class(scores_a, labels_a),
        "localization": accuracy_from_ious(ious_a, cls_a, thresholds),
        "n_images": int(len(scores_a)),
        "n_boxes": int(len(ious_a)),
    }
    dataset_names = getattr(getattr(loader, "dataset", None), "names", None)
    result["names"] = [dataset_names[i] for i in seen] if dataset_names is not None else []
    if att_maps:  # the mechanism: does the contrast attention point at the findings?
        from cianet.metrics import attention_in_boxes

        result["attention"] = attention_in_boxes(np.stack(att_maps), att_boxes, (s, s))
    if keep_predictions:
        result.update(scores=scores_a, labels=labels_a, ious=ious_a, box_classes=cls_a, box_images=np.asarray(box_img))
    return result


def json_safe(obj):
    """``obj`` with non-finite floats replaced by None, recursively through dicts (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    return obj


def metrics_markdown(metrics: dict[str, Any], title: str = "") -> str:
    from cianet.metrics import format_auc_table, format_localization_table

    loc = metrics["localization"]
    parts = [f"# {title}\n" if title else "",
             f"{metrics.get('n_images', '?')} test images, {metrics.get('n_boxes', '?')} boxes.\n",
             "## Localization accuracy\n", format_localization_table({"model": loc}), "",
             "## AUC\n", format_auc_table({"model": metrics["auc"]}), ""]
    att = metrics.get("attention")
    if att and att.get("n_images"):
        parts += ["## Contrast attention\n", attention_sentence(att), ""]
    return "\n".join(parts)


def attention_sentence(att: dict[str, Any]) -> str:
    """One line on the attention mechanism metric (``cianet.metrics.attention_in_boxes``)."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.0f}%"

    return (f"On {att['n_images']} test images with boxes, the largest cell of |M+ - M-| lies in a true finding "
            f"for {pct(att['hit_rate'])} of them; the attention puts {pct(att['mass_in_boxes'])} of its mass in "
            f"the findings' cells, which cover {pct(att['area_share'])} of the grid.")


def write_metrics(run_dir: str | Path, metrics: dict[str, Any], title: str = "") -> None:
    """``metrics.json`` (keys localization, auc, n_images, n_boxes, and attention for CIA-Net; NaN -> null) and
    ``metrics.md``."""
    run_dir = Path(run_dir)
    keep = {k: metrics[k] for k in ("localization", "auc", "n_images", "n_boxes", "attention") if k in metrics}
    atomic_write_json(run_dir / "metrics.json", json_safe(keep))
    atomic_write_text(run_dir / "metrics.md", metrics_markdown(metrics, title))
    if "scores" in metrics:  # per-image scores and per-box IoUs, for ROC curves and further analysis
        from cianet.utils.atomic import atomic_path

        with atomic_path(run_dir / PREDICTIONS) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, scores=metrics["scores"], labels=metrics["labels"], ious=metrics["ious"],
                         box_classes=metrics["box_classes"], box_images=metrics["box_images"])


def read_predictions(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The ``predictions.npz`` of an evaluated run (keys ``PREDICTION_KEYS``); InputError when absent."""
    from cianet.errors import InputError

    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise InputError(f"{path} is missing: the run predates per-box predictions; evaluate it again with "
                               f"`cianet evaluate --run {run_dir}`")
    with np.load(path) as z:
        return {k: z[k] for k in PREDICTION_KEYS}

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

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cianet.errors import InputError
from cianet.labels import NIH_LABEL_SET, LabelSet
from cianet.metrics import (
    PROB_THRESHOLD_GRID,
    accuracy_from_ious,
    attention_in_boxes,
    auc_per_class,
    box_ious,
    choose_prob_threshold,
    class_mean_accuracy,
    format_auc_table,
    format_localization_table,
    image_evidence_from_logits,
    image_scores_from_logits,
    mask_iou,
    pointing_hit,
)
from cianet.models.alignment import boxes_to_original, mask_to_original
from cianet.run.forward import align_batch, forward_grids
from cianet.utils.atomic import atomic_path, atomic_write_json, atomic_write_text, strict_json
from cianet.utils.progress import batch_progress, dataset_size

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
PREDICTIONS = "predictions.npz"
PREDICTION_KEYS = ("scores", "labels", "ious", "box_classes", "box_images")
#: written since the tie-free AUC: "evidence" (N, C) float64 (the AUCs rank by it), per box "pointing" (the
#: pointing game's hit) and, where a validation threshold was chosen, "ious_val" (IoU at that threshold)
OPTIONAL_PREDICTION_KEYS = ("evidence", "pointing", "ious_val")


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
    label_set: LabelSet | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Evaluate on ``loader`` (a test or validation loader whose boxes are all the boxes of its images).

    ``rescale``: the run's ``loss.mil_rescale``, so that the image scores are the probabilities the MIL loss
    trained (``image_scores_from_logits(..., rescale)``). ``"names"`` lists the images scored, in order.
    ``precision``: "fp32", "bf16" or "fp16" (:func:`cianet.run.precision.resolve_precision`; default: float16
    autocast on CUDA, float32 elsewhere), recorded as ``"precision"``.

    Returns {"auc": {class: auc, "Mean"}, "localization": {"0.1": {class: acc, "Mean"}, ...}, "pointing_game":
    {class: acc, "Mean"}, "n_images", "n_boxes", "iou_grid" (n_boxes, len(PROB_THRESHOLD_GRID)): each box's IoU
    at every candidate probability threshold, "box_classes"} and, with keep_predictions, "scores" (N, 14),
    "evidence" (N, 14, float64), "labels" (N, 14), per-box "ious" and "pointing".

    AUCs rank the images by their MIL evidence ``sum_j -log(1 - p_j)`` (float64), not by the score, which rounds
    to 1.0 in float32 for confident images and would tie them. The pointing game takes each box's class's
    highest test-grid cell by logit (ties: :func:`cianet.metrics.pointing_hit`).
    """
    # The data set's classes: given, else those of the loader's dataset (PairedXrayDataset.label_set), else NIH.
    classes = label_set or getattr(getattr(loader, "dataset", None), "label_set", None) or NIH_LABEL_SET
    precision = precision or ("fp16" if device.type == "cuda" else "fp32")
    model.eval()
    found = _Collected(classes.n_box, aligned=align_net is not None)
    grids = GridKeeper() if keep_predictions else None  # low-resolution test grids, for the viewer
    for batch in batch_progress(loader, "evaluate", dataset_size(loader), disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        orig_boxes = batch["boxes"]  # (B, K, 5) in the un-aligned S frame
        batch = align_batch(align_net, batch)
        out = forward_grids(model, batch, upsample, channels_last, precision=precision)
        found.add_batch(out, batch, orig_boxes, rescale, grids)
    return _evaluation_result(found, classes, loader, thresholds, precision, keep_predictions, grids)


@dataclass
class _Collected:
    """What :func:`evaluate` gathers batch by batch: per image, and per ground-truth box of the box classes."""

    n_box: int
    aligned: bool  # the model saw aligned images: IoU is counted in the image file's frame
    scores: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    evidence: list = field(default_factory=list)  # tie-free AUC ranks
    seen: list = field(default_factory=list)  # dataset positions of the images scored
    ious: list = field(default_factory=list)
    iou_grid: list = field(default_factory=list)  # calibration-free localization
    pointing: list = field(default_factory=list)
    box_cls: list = field(default_factory=list)
    box_img: list = field(default_factory=list)
    att_maps: list = field(default_factory=list)  # CIA-Net: |M+ - M-| of test images with boxes
    att_boxes: list = field(default_factory=list)  # and their boxes (model frame)
    side: int = 0  # S, the last batch's image side

    def add_batch(
        self, out: dict, batch: dict, orig_boxes: torch.Tensor, rescale: bool, grids: GridKeeper | None
    ) -> None:
        n_box = self.n_box
        self.scores.append(image_scores_from_logits(out["logits"], rescale=rescale).cpu().numpy())
        self.evidence.append(image_evidence_from_logits(out["logits"], rescale=rescale))
        self.labels.append(batch["labels"].cpu().numpy())
        self.seen.extend(int(i) for i in batch["index"])
        probs = torch.sigmoid(out["test_logits"][:, :n_box]).cpu().numpy()  # (B, n_box, U, U): 8 on NIH
        box_logits = out["test_logits"][:, :n_box].float().cpu().numpy()
        if grids is not None:
            grids.add(probs, batch, n_box)
        self.side = batch["image"].shape[-1]
        for b in range(probs.shape[0]):
            rows = orig_boxes[b][orig_boxes[b, :, 0] >= 0].cpu().numpy()
            rows = rows[rows[:, 0] < n_box]
            if len(rows):
                self.add_boxes(out, batch, b, rows, probs, box_logits[b])

    def add_boxes(
        self, out: dict, batch: dict, b: int, rows: np.ndarray, probs: np.ndarray, box_logits: np.ndarray
    ) -> None:
        """The boxes ``rows`` (K, 5) of image ``b``: IoU, the IoU grid, the pointing game, attention."""
        s, n_box = self.side, self.n_box
        if "delta" in out:
            moved = batch["boxes"][b][batch["boxes"][b, :, 0] >= 0].cpu().numpy()  # aligned when aligning
            self.att_maps.append(out["delta"][b].cpu().numpy())
            self.att_boxes.append([tuple(map(float, r[1:])) for r in moved if r[0] < n_box])
        if not self.aligned:
            blist = [(0, int(r[0]), *map(float, r[1:])) for r in rows]
            self.ious.extend(box_ious(probs[b : b + 1], blist, (s, s)).tolist())
            self.iou_grid.extend(
                np.stack([box_ious(probs[b : b + 1], blist, (s, s), t) for t in PROB_THRESHOLD_GRID], axis=1)
            )
        else:
            self.add_file_frame_ious(batch, b, rows, probs)
        self.pointing.extend(_pointing_hits(box_logits, rows, s, batch["params"][b] if self.aligned else None))
        self.box_cls.extend(int(r[0]) for r in rows)
        self.box_img.extend([int(batch["index"][b])] * len(rows))

    def add_file_frame_ious(self, batch: dict, b: int, rows: np.ndarray, probs: np.ndarray) -> None:
        """IoU of aligned predictions: the class's region mapped back into the image file's frame."""
        s = self.side
        w, h = (int(round(v)) for v in batch["orig_size"][b].tolist())
        params = batch["params"][b].cpu().double().numpy()
        for r in rows:
            k = int(r[0])
            region = mask_to_original(probs[b, k], params, (w, h))  # (H, W) p, file frame; 0 outside
            fx, fy = w / s, h / s  # S frame -> file frame
            file_box = (r[1] * fx, r[2] * fy, r[3] * fx, r[4] * fy)
            self.ious.append(mask_iou(region > 0.5, file_box))
            self.iou_grid.append([mask_iou(region > t, file_box) for t in PROB_THRESHOLD_GRID])


def _evaluation_result(
    found: _Collected,
    classes: LabelSet,
    loader,
    thresholds,
    precision: str,
    keep_predictions: bool,
    grids: GridKeeper | None,
) -> dict[str, Any]:
    """:func:`evaluate`'s metrics (and, with ``keep_predictions``, its arrays) from what it collected."""
    scores_a = np.concatenate(found.scores) if found.scores else np.zeros((0, len(classes)))
    labels_a = np.concatenate(found.labels) if found.labels else np.zeros((0, len(classes)))
    evidence_a = np.concatenate(found.evidence) if found.evidence else np.zeros((0, len(classes)))
    ious_a, cls_a = np.asarray(found.ious, dtype=np.float64), np.asarray(found.box_cls, dtype=np.int64)
    pointing_a = np.asarray(found.pointing, dtype=np.float64)
    result: dict[str, Any] = {
        "auc": auc_per_class(evidence_a, labels_a, classes.names),  # the evidence: no ties where scores are 1.0
        "localization": accuracy_from_ious(ious_a, cls_a, thresholds, classes.box_names),
        "pointing_game": class_mean_accuracy(pointing_a, cls_a, classes.box_names),
        # per box: IoU at each PROB_THRESHOLD_GRID value, for a threshold chosen on validation (val_threshold)
        "iou_grid": np.asarray(found.iou_grid, dtype=np.float64).reshape(-1, len(PROB_THRESHOLD_GRID)),
        "box_classes": cls_a,
        "n_images": int(len(scores_a)),
        "n_boxes": int(len(ious_a)),
        "precision": precision,
    }
    dataset_names = getattr(getattr(loader, "dataset", None), "names", None)
    result["names"] = [dataset_names[i] for i in found.seen] if dataset_names is not None else []
    if found.att_maps:  # the mechanism: does the contrast attention point at the findings?
        result["attention"] = attention_in_boxes(np.stack(found.att_maps), found.att_boxes, (found.side, found.side))
    if keep_predictions:
        result.update(
            scores=scores_a,
            labels=labels_a,
            ious=ious_a,
            box_classes=cls_a,
            box_images=np.asarray(found.box_img),
            evidence=evidence_a,
            pointing=pointing_a,
        )
        if dataset_names is not None:  # the image of each box by name (box_images are dataset positions)
            result["box_names"] = [dataset_names[i] for i in found.box_img]
            result.update(grids.result(dataset_names))
    return result


#: the side of the test grids kept for the viewer (average-pooled from U x U), and how many images keep one
#: besides those with boxes: 8 classes x 32 x 32 uint8 is 8 KB an image
VIEW_GRID = 32
#: the viewer's arrays in predictions.npz (with "grid_names"): GridKeeper
VIEW_KEYS = ("grids", "grid_params")
VIEW_GRID_IMAGES = 1000


class GridKeeper:
    """Collects, during :func:`evaluate`, each test image's box-class test-grid probabilities at most
    ``VIEW_GRID`` cells a side (uint8, ``round(255 p)``) and its alignment parameters: what ``cianet view``
    draws the predicted regions and heatmaps from. Every image with a box keeps its grid; the others up to
    ``VIEW_GRID_IMAGES`` in all."""

    def __init__(self) -> None:
        self.index: list[int] = []
        self.grids: list[np.ndarray] = []
        self.params: list[np.ndarray] = []

    def add(self, probs: np.ndarray, batch: dict, n_box: int) -> None:
        u = probs.shape[-1]
        side = min(u, VIEW_GRID)
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(probs)), side)
        q = np.rint(pooled.numpy() * 255.0).astype(np.uint8)  # (B, n_box, side, side)
        cls = batch["boxes"][:, :, 0]
        has_box = ((cls >= 0) & (cls < n_box)).any(dim=1).cpu().numpy()
        params = batch.get("params")
        for b in range(len(q)):
            if not has_box[b] and len(self.index) >= VIEW_GRID_IMAGES:
                continue
            self.index.append(int(batch["index"][b]))
            self.grids.append(q[b])
            self.params.append(
                np.array([0, 0, 1, 1, 0], np.float32) if params is None else params[b].detach().float().cpu().numpy()
            )

    def result(self, dataset_names) -> dict:
        if not self.grids:
            return {}
        return {
            "grids": np.stack(self.grids),
            "grid_params": np.stack(self.params),
            "grid_names": [dataset_names[i] for i in self.index],
        }


NO_VALIDATION = "no validation split (protocol.val_share = 0): no threshold chosen"


def add_val_threshold(test: dict[str, Any], val: dict[str, Any] | None) -> dict[str, Any]:
    """Set ``test["val_threshold"]``: the cell probability threshold chosen on the validation boxes
    (:func:`cianet.metrics.choose_prob_threshold` over ``PROB_THRESHOLD_GRID``: the best class-mean accuracy
    at T(IoU) = 0.5, ties to the threshold nearest 0.5) and the test localization accuracy at it, at every
    T(IoU) of ``test["localization"]``. ``val`` and ``test`` are :func:`evaluate` results of the same model.

    ``{"threshold", "localization": {T(IoU): {class: acc, "Mean"}}, "val_accuracy", "val_boxes", "t_iou"}``;
    threshold and localization None (with a ``reason``) without a validation split or validation boxes.
    With the per-box ``ious`` kept, ``test["ious_val"]`` holds each test box's IoU at that threshold.
    """
    choice = None if val is None else choose_prob_threshold(val["iou_grid"], val["box_classes"])
    if choice is None:
        reason = NO_VALIDATION if val is None else "the validation images have no boxes: no threshold chosen"
        test["val_threshold"] = {"threshold": None, "localization": None, "reason": reason}
        return test
    g = PROB_THRESHOLD_GRID.index(choice["threshold"])
    ious = test["iou_grid"][:, g]
    loc = test["localization"]
    names = [c for c in next(iter(loc.values()), {}) if c != "Mean"]
    with warnings.catch_warnings():  # classes without boxes: test["localization"] has warned already
        warnings.simplefilter("ignore")
        at_choice = accuracy_from_ious(ious, test["box_classes"], [float(t) for t in loc], names)
    test["val_threshold"] = {
        "threshold": choice["threshold"],
        "t_iou": choice["t_iou"],
        "val_accuracy": choice["accuracy"],
        "val_boxes": choice["n_boxes"],
        "localization": at_choice,
    }
    if "ious" in test:
        test["ious_val"] = ious
    return test


def _pointing_hits(grids: np.ndarray, rows: np.ndarray, s: int, params: torch.Tensor | None) -> list[float]:
    """The pointing game of each box row ``(class, x, y, w, h)`` (un-aligned S frame) on its class's test-grid
    logits ``grids`` (n_box, U, U) of the model's input; with alignment ``params`` the cell centres are mapped
    back into the un-aligned frame (:func:`cianet.metrics.pointing_hit`)."""
    to_frame = None
    if params is not None:
        p = params.detach().cpu().double().numpy()

        def to_frame(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            points = boxes_to_original(np.stack([x, y, 0 * x, 0 * y], axis=1), p, (s, s), (s, s))
            return points[:, 0], points[:, 1]

    return [pointing_hit(grids[int(r[0])], r[1:], (s, s), to_frame) for r in rows]


def json_safe(obj):
    """``obj`` with non-finite floats replaced by None, recursively through dicts and lists (JSON has no NaN)."""
    return strict_json(obj)


def metrics_markdown(metrics: dict[str, Any], title: str = "") -> str:
    loc = metrics["localization"]
    parts = [
        f"# {title}\n" if title else "",
        f"{metrics.get('n_images', '?')} test images, {metrics.get('n_boxes', '?')} boxes.\n",
        cross_dataset_lines(metrics["cross_dataset"]) if metrics.get("cross_dataset") else "",
        "## Localization accuracy\n",
        format_localization_table({"model": loc}),
        "",
        *calibration_free_lines(metrics),
        "## AUC\n",
        "Images ranked by their MIL evidence sum_j -log(1 - p_j), which does not saturate.\n",
        format_auc_table({"model": metrics["auc"]}),
        "",
    ]
    att = metrics.get("attention")
    if att and att.get("n_images"):
        parts += ["## Contrast attention\n", attention_sentence(att), ""]
    if metrics.get("ci"):
        parts += ["## Bootstrap confidence intervals\n", ci_lines(metrics["ci"]), ""]
    plots = metrics.get("plots") or {}
    if plots:
        titles = {
            "roc": "ROC per class",
            "pr": "Precision-recall per class",
            "localization": "Localization accuracy against T(IoU)",
            "loss": "Training loss",
        }
        parts += ["## Plots\n"] + [f"![{titles.get(k, k)}]({f})\n" for k, f in plots.items()]
    return "\n".join(parts)


def calibration_free_lines(metrics: dict[str, Any]) -> list[str]:
    """Markdown of the pointing game and of the localization at the validation-chosen threshold (absent in
    metrics of older runs: nothing)."""
    parts = []
    if metrics.get("pointing_game"):
        parts += [
            "## Pointing game\n",
            "Share of the boxes whose class's highest test-grid cell (by logit) has its centre in the box "
            "(ties: the share of the tied cells in the box); no probability threshold involved.\n",
            format_auc_table({"model": metrics["pointing_game"]}),
            "",
        ]
    vt = metrics.get("val_threshold")
    if vt:
        parts.append("## Localization at the validation-chosen threshold\n")
        if vt.get("threshold") is None:
            parts += [f"Not measured: {vt.get('reason', 'no threshold chosen')}.\n"]
        else:
            parts += [
                f"Cells with p > {vt['threshold']:g} (chosen on {vt['val_boxes']} validation boxes: best mean "
                f"accuracy at T(IoU) = {vt['t_iou']:g}, {vt['val_accuracy']:.3f}, over a fixed grid of "
                "thresholds) instead of the paper's p > 0.5.\n",
                format_localization_table({"model": vt["localization"]}),
                "",
            ]
    return parts


def cross_dataset_lines(cross: dict[str, Any]) -> str:
    """Markdown of ``metrics["cross_dataset"]`` (``cianet evaluate --out``): what was scored, and what not."""

    def names(key: str) -> str:
        return ", ".join(cross.get(key) or []) or "none"

    mapped = f", classes mapped to {cross['label_map']}" if cross.get("label_map") else ""
    lines = [
        f"Cross-data-set evaluation of run {cross.get('run')} on {cross.get('dataset')} "
        f"({cross.get('data_root')}{mapped}): {cross.get('scored_images')} of {cross.get('images')} images "
        f"scored ({cross.get('negative_pool')} No Finding images kept as negatives, "
        f"{cross.get('missing_files')} files missing).",
        "",
        f"- classes scored: {names('scored')}",
        f"- the model's classes left out (no counterpart in the data set): {names('left_out')}",
        f"- the data set's classes the model has no output for: {names('not_in_model')}",
    ]
    dropped = cross.get("boxes_dropped") or {}
    if dropped:
        lines.append("- boxes not used for localization: " + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    return "\n".join(lines) + "\n"


def ci_lines(ci: dict[str, Any]) -> str:
    """Markdown lines of ``metrics["ci"]`` (mean AUC and class-mean localization accuracy per T(IoU))."""

    def fmt(r):
        if r.get("value") is None:
            return "n/a"
        lo, hi = r.get("low"), r.get("high")
        interval = "n/a" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"
        return f"{r['value']:.3f} {interval}"

    conf = round(100 * ci.get("confidence", 0.95))
    lines = [f"{conf}% intervals from {ci.get('n_boot', '?')} bootstrap resamples of the test images/boxes.", ""]
    if ci.get("auc"):
        lines.append(f"- mean AUC: {fmt(ci['auc'])}")
    for t, r in (ci.get("localization") or {}).items():
        lines.append(f"- localization accuracy (class mean), T(IoU) = {t}: {fmt(r)}")
    if ci.get("pointing"):
        lines.append(f"- pointing game (class mean): {fmt(ci['pointing'])}")
    return "\n".join(lines)


def attention_sentence(att: dict[str, Any]) -> str:
    """One line on the attention mechanism metric (``cianet.metrics.attention_in_boxes``)."""

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.0f}%"

    return (
        f"On {att['n_images']} test images with boxes, the largest cell of |M+ - M-| lies in a true finding "
        f"for {pct(att['hit_rate'])} of them; the attention puts {pct(att['mass_in_boxes'])} of its mass in "
        f"the findings' cells, which cover {pct(att['area_share'])} of the grid."
    )


def write_metrics(run_dir: str | Path, metrics: dict[str, Any], title: str = "") -> None:
    """``metrics.json`` (keys localization, auc, n_images, n_boxes, and attention for CIA-Net; NaN -> null) and
    ``metrics.md``."""
    run_dir = Path(run_dir)
    keep = {
        k: metrics[k]
        for k in (
            "localization",
            "auc",
            "pointing_game",
            "val_threshold",
            "n_images",
            "n_boxes",
            "precision",
            "attention",
            "ci",
            "plots",
            "cross_dataset",
        )
        if k in metrics
    }
    atomic_write_json(run_dir / "metrics.json", json_safe(keep))
    atomic_write_text(run_dir / "metrics.md", metrics_markdown(metrics, title))
    if "scores" in metrics:  # per-image scores and per-box IoUs, for ROC curves and further analysis
        with atomic_path(run_dir / PREDICTIONS) as tmp:
            with open(tmp, "wb") as fh:
                names = {
                    k: np.asarray(metrics[k], dtype=str) for k in ("names", "box_names", "grid_names") if metrics.get(k)
                }
                extra = {k: metrics[k] for k in (*OPTIONAL_PREDICTION_KEYS, *VIEW_KEYS) if metrics.get(k) is not None}
                np.savez(
                    fh,
                    scores=metrics["scores"],
                    labels=metrics["labels"],
                    ious=metrics["ious"],
                    box_classes=metrics["box_classes"],
                    box_images=metrics["box_images"],
                    **names,
                    **extra,
                )


def read_predictions(run_dir: str | Path, need: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The ``predictions.npz`` of an evaluated run (keys ``PREDICTION_KEYS``, and those of
    ``OPTIONAL_PREDICTION_KEYS``, "names", "box_names" it has); InputError when absent, or when it lacks a key of
    ``need`` (e.g. ``("evidence",)``: written by an older cianet)."""
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise InputError(
            f"{path} is missing: the run predates per-box predictions; evaluate it again with "
            f"`cianet evaluate --run {run_dir}`"
        )
    with np.load(path) as z:
        missing = [k for k in need if k not in z.files]
        if missing:
            raise InputError(
                f"{path} has no {', '.join(missing)}: written by an older cianet; evaluate the run "
                f"again with `cianet evaluate --run {run_dir}`"
            )
        out = {k: z[k] for k in PREDICTION_KEYS}
        # names/box_names: written since the viewer; the optional keys since the tie-free AUC
        out.update(
            {
                k: z[k]
                for k in ("names", "box_names", *OPTIONAL_PREDICTION_KEYS, *VIEW_KEYS, "grid_names")
                if k in z.files
            }
        )
        return out

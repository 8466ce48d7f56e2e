"""``cianet evaluate --run R --data-root D --out DIR``: a finished run scored on another data set.

A run's own evaluation (:mod:`cianet.evaluation.evaluate`) rebuilds its splits and reuses its ``pairs.json``:
both belong to the data the run trained on. Here none of that is used. The model meets the other data set's
classes by name (after ``--label-map nih``, :func:`cianet.data.label_maps.match_classes`); its classes
without a counterpart are left out of every figure and named in ``metrics.json`` (``cross_dataset``), as are
the data set's classes the model has no output for and the boxes it cannot localize.

Which images are scored (choices the issue left open, see docs/method.md "Cross-data-set evaluation"):

- Every image of the data root whose file was found, except, for a CIA-Net that pairs with real negatives
  (``sim``/``random``), a seeded share (:data:`REFERENCE_SHARE`) of its No Finding images, which become the
  negative pool and are not scored: as in the run's own protocol, a scored image is never anybody's
  negative. The pairing follows the run's strategy and ``exclude_same_patient``; the run's ``--hash-index``
  and image cache (made for its training data) are not used.
- ``canonical`` and ``oracle`` runs and the baseline need no pool: every image is scored.

Writes ``metrics.json``/``metrics.md``, ``predictions.npz`` and the plots into ``out``, never into the run.
"""

from __future__ import annotations

import math
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cianet.data.label_maps import match_classes
from cianet.data.layouts import open_index
from cianet.errors import InputError, MissingPathError, UsageError
from cianet.evaluation.evaluate import bootstrap_intervals
from cianet.evaluation.plots import write_evaluation_plots
from cianet.labels import label_set_from
from cianet.metrics import accuracy_from_ious, auc_per_class, class_mean_accuracy
from cianet.models.folding import for_inference
from cianet.run.checkpoints import load_alignment, load_checkpoint, model_from_checkpoint
from cianet.run.device import resolve_device
from cianet.run.loaders import image_source, make_loaders
from cianet.run.pairing import pair_negatives, write_pairing_record
from cianet.run.precision import check_setting, resolve_precision
from cianet.run.protocol import RunData
from cianet.run.scoring import THRESHOLDS, evaluate, write_metrics

#: Share of the data set's No Finding images that serve as negatives (and are not scored).
REFERENCE_SHARE = 0.5


def reference_pool(index, seed: int, share: float = REFERENCE_SHARE) -> list[str]:
    """A seeded ``share`` of ``index``'s readable No Finding images (at least one when there is one), in index
    order: the negatives of a cross-data-set evaluation."""
    found = sorted(r.name for r in index.records if r.no_finding and r.path is not None)
    if not found:
        return []
    random.Random(seed).shuffle(found)
    chosen = set(found[: max(1, math.ceil(share * len(found)))])
    return [r.name for r in index.records if r.name in chosen]


def restrict_metrics(metrics: dict[str, Any], classes, scored: tuple[str, ...], thresholds) -> dict[str, Any]:
    """``metrics`` of :func:`cianet.run.scoring.evaluate` (with predictions, in the model's classes
    ``classes``) re-measured on the classes ``scored`` only: AUC, localization and their means, the score and
    label columns and the boxes."""
    cols = [classes.index(c) for c in scored]
    box_scored = [c for c in classes.box_names if c in scored]
    remap = {classes.index(c): j for j, c in enumerate(box_scored)}
    keep = np.array([int(k) in remap for k in metrics["box_classes"]], dtype=bool)
    out = dict(metrics)
    out["scores"], out["labels"] = metrics["scores"][:, cols], metrics["labels"][:, cols]
    out["ious"] = np.asarray(metrics["ious"])[keep]
    if metrics.get("evidence") is not None:  # what evaluate adds since the tie-free AUC
        out["evidence"] = np.asarray(metrics["evidence"])[:, cols]
        out["pointing"] = np.asarray(metrics["pointing"])[keep]
        out["iou_grid"] = np.asarray(metrics["iou_grid"])[keep]
    out["box_classes"] = np.array([remap[int(k)] for k in np.asarray(metrics["box_classes"])[keep]], np.int64)
    out["box_images"] = np.asarray(metrics["box_images"])[keep]
    if metrics.get("box_names"):
        out["box_names"] = [n for n, k in zip(metrics["box_names"], keep) if k]
    out["auc"] = auc_per_class(out.get("evidence", out["scores"]), out["labels"], scored)  # as evaluate ranks
    out["localization"] = accuracy_from_ious(out["ious"], out["box_classes"], thresholds, box_scored)
    if "pointing" in out:
        out["pointing_game"] = class_mean_accuracy(out["pointing"], out["box_classes"], box_scored)
    out["n_boxes"] = int(keep.sum())
    return out


def evaluate_on_dataset(
    run_dir: str | Path,
    data_root: str | Path,
    out: str | Path,
    dataset: str = "auto",
    label_map: str | None = None,
    box_merge: str | None = None,
    merge_iou: float | None = None,
    entry_csv: str | None = None,
    bbox_csv: str | None = None,
    device: str = "auto",
    progress: bool = True,
    n_boot: int = 1000,
    precision: str | None = None,
) -> dict[str, Any]:
    """Score the run ``run_dir`` on the data root ``data_root`` (layout ``dataset``, classes mapped by
    ``label_map``) and write the results into ``out`` (see the module docstring). Returns the metrics, with
    ``cross_dataset`` describing what was scored.

    UsageError when ``out`` is the run folder or ``data_root`` is the run's own data root; InputError when
    no class of the run has a counterpart in the data set.
    """
    check_setting(precision)
    run_dir, out, data_root = _checked_folders(Path(run_dir), Path(out), Path(data_root))
    dev = resolve_device(device)
    model, cfg = model_from_checkpoint(load_checkpoint(run_dir), dev)
    if cfg.data.data_root and Path(cfg.data.data_root).resolve() == data_root.resolve():
        raise UsageError(
            f"--data-root {data_root} is the data the run trained on: scoring all of it would score "
            "training images; evaluate the run's own test split with `cianet evaluate --run` "
            "without --out"
        )
    classes = label_set_from(cfg.data.labels, cfg.data.box_labels)
    d = cfg.data
    d.data_root, d.dataset, d.label_map = str(data_root), dataset, label_map
    d.entry_csv, d.bbox_csv, d.cache, d.max_images = entry_csv, bbox_csv, None, None
    if box_merge is not None:
        d.box_merge = box_merge
    if merge_iou is not None:
        d.merge_iou = merge_iou
    cfg.negatives.hash_index = None  # made for the training data's negatives
    cfg.run.out, cfg.run.progress = str(out), progress
    index, match = _matched_index(data_root, d, classes)
    d.dataset = index.dataset
    data, pool, found = _scored_data(cfg, index, data_root, label_map)
    metrics, pairing = _score(model, cfg, data, dev, precision, progress, classes, match.scored)
    metrics["cross_dataset"] = {
        "run": run_dir.resolve().name,
        "model_classes": list(classes.names),
        "dataset": index.dataset,
        "data_root": data_root.resolve().name,
        "label_map": label_map,
        "images": len(index),
        "scored_images": len(data.test),
        "negative_pool": len(pool),
        "missing_files": len(index) - len(found),
        "negatives": None if cfg.model.kind == "baseline" else cfg.negatives.strategy,
        **match.as_dict(),
    }
    if n_boot:
        metrics["ci"] = bootstrap_intervals(metrics, n_boot, seed=int(cfg.run.seed))
    _write_results(
        out,
        metrics,
        list(match.scored),
        pairing,
        data,
        title=f"{cfg.model.kind} of run {run_dir.resolve().name} on {index.dataset} ({data_root.resolve().name})",
    )
    return metrics


def _checked_folders(run_dir: Path, out: Path, data_root: Path) -> tuple[Path, Path, Path]:
    """The run folder (``--run R/checkpoint.pt`` names the folder holding it); ``out`` must be a folder other
    than the run's (UsageError)."""
    if run_dir.is_file():  # --run R/checkpoint.pt: the run is the folder holding it
        run_dir = run_dir.parent
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder for the metrics")
    if out.resolve() == run_dir.resolve():
        raise UsageError(
            f"--out {out} is the run folder: a cross-data-set evaluation writes elsewhere (the "
            "run's metrics.json is its own test split's)"
        )
    return run_dir, out, data_root


def _matched_index(data_root: Path, d, classes):
    """The data set's index with its classes matched to the model's ``classes`` by name (``d``: the run's
    data section pointed at the data set); a missing file or an unmatched data set is an input error."""
    try:
        full = open_index(
            data_root,
            d.dataset,
            entry_csv=d.entry_csv,
            bbox_csv=d.bbox_csv,
            box_merge=d.box_merge,
            merge_iou=d.merge_iou,
            label_map=d.label_map,
        )
        return match_classes(full, classes)
    except FileNotFoundError as exc:
        raise MissingPathError(str(exc)) from None
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _scored_data(cfg, index, data_root: Path, label_map: str | None):
    """``(RunData whose test images are the scored ones, the negative pool, the images found)``."""
    found = index.present()
    if not found:
        raise MissingPathError(
            f"{data_root}: none of the {len(index)} images of its {index.dataset} index was found below it"
        )
    needs_pool = cfg.model.kind != "baseline" and cfg.negatives.pool_strategy() is not None  # prior: its fallback
    pool = reference_pool(index, int(cfg.run.seed)) if needs_pool else []
    in_pool = set(pool)
    scored = [n for n in found if n not in in_pool]
    description = (
        f"cross-data-set: {index.dataset}"
        + (f" mapped to {label_map}" if label_map else "")
        + f", {len(scored)} images"
    )
    return RunData(index, [], scored, set(), description=description), pool, found


def _score(
    model, cfg, data, dev, precision: str | None, progress: bool, classes, scored: tuple[str, ...]
) -> tuple[dict[str, Any], Any]:
    """The model's metrics on ``data``'s test images, restricted to the classes ``scored``, and the pairing
    of those images with their negatives."""
    align_net = load_alignment(cfg.align.checkpoint, dev).net if cfg.align.checkpoint else None
    source = image_source(cfg, data.index)
    pairing = pair_negatives(cfg, data, source, align_net=align_net)  # pool: the No Finding images not scored
    _, _, _, loader = make_loaders(cfg, data, pairing=pairing)
    precision = resolve_precision(
        precision or cfg.run.precision, dev, what="--precision" if precision else "run.precision"
    )
    with warnings.catch_warnings():  # classes left out are measured again below, without them
        warnings.filterwarnings("ignore", message="AUC undefined")
        warnings.filterwarnings("ignore", message="localization accuracy: no ground-truth box")
        raw = evaluate(
            for_inference(model),
            loader,
            dev,
            align_net=align_net,
            progress=progress,
            upsample=True,
            keep_predictions=True,
            rescale=cfg.loss.mil_rescale,
            precision=precision,
            channels_last=True,
        )
    return restrict_metrics(raw, classes, scored, THRESHOLDS), pairing


def _write_results(out: Path, metrics: dict[str, Any], scored: list[str], pairing, data, title: str) -> None:
    """metrics.json/.md, predictions.npz, the plots and negatives.csv into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    metrics["plots"] = write_evaluation_plots(out, metrics, scored)
    write_metrics(out, metrics, title=title)
    write_pairing_record(pairing, data, out)  # negatives.csv: what each scored image was contrasted with

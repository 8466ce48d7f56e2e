"""``cianet evaluate``: a finished run, rebuilt as it trained, scored on its own test split.

The scoring itself (paper section 4.1) is :func:`cianet.run.scoring.evaluate`, shared with training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cianet.evaluation.plots import write_evaluation_plots
from cianet.labels import label_set_from
from cianet.metrics import auc_ci, class_mean_ci, localization_ci
from cianet.models.folding import for_inference
from cianet.run.checkpoints import load_alignment, load_checkpoint, model_from_checkpoint
from cianet.run.device import resolve_device
from cianet.run.loaders import image_source, make_loaders, make_val_loader
from cianet.run.pairing import pair_negatives, write_pairing_record
from cianet.run.precision import check_setting, resolve_precision
from cianet.run.protocol import build_run_data
from cianet.run.scoring import add_val_threshold, evaluate, write_metrics


@dataclass
class LoadedRun:
    """A finished run, rebuilt for evaluation: its model (eval mode, on ``device``), config and test data."""

    model: nn.Module
    cfg: Any  # cianet.config.Config
    description: str
    test_ds: Any  # cianet.run.datasets.PairedXrayDataset
    test_loader: Any
    align_net: nn.Module | None
    device: torch.device
    val_loader: Any = None  # the run's validation images (None without a validation split)
    pairing: Any = None  # cianet.run.pairing.RunPairing: the negatives its images are scored with
    data: Any = None  # cianet.run.protocol.RunData


def load_run(
    run_dir: str | Path,
    device: str = "auto",
    data_root: str | None = None,
    progress: bool = False,
    dataset: str | None = None,
) -> LoadedRun:
    """Load a run's checkpoint and rebuild its own test split (and negatives, alignment) as it trained;
    ``data_root`` / ``dataset`` (its layout) override the run's ``data.data_root`` / ``data.dataset``.

    Reads the run folder (checkpoint, ``pairs.json``); writes nothing.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():  # --run R/checkpoint.pt: the run is the folder holding it
        run_dir = run_dir.parent
    dev = resolve_device(device)
    model, cfg = model_from_checkpoint(load_checkpoint(run_dir), dev)
    if data_root:
        cfg.data.data_root = data_root
    if dataset:
        cfg.data.dataset = dataset
    cfg.run.out, cfg.run.progress = str(run_dir), progress
    data = build_run_data(cfg)
    pairing = pair_negatives(cfg, data, image_source(cfg, data.index))  # shared by the test and val loaders
    _, _, test_ds, test_loader = make_loaders(cfg, data, pairing=pairing)
    _, val_loader = make_val_loader(cfg, data, pairing)
    align_net = load_alignment(cfg.align.checkpoint, dev).net if cfg.align.checkpoint else None
    return LoadedRun(model, cfg, data.description, test_ds, test_loader, align_net, dev, val_loader, pairing, data)


def evaluate_run(
    run_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    data_root: str | None = None,
    n_boot: int = 1000,
    precision: str | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Re-evaluate a finished run on its own test split; writes into the run folder metrics.json/md (with
    bootstrap intervals, ``n_boot`` resamples; 0: none), predictions.npz and the plots (roc, pr,
    localization, loss PNGs; :mod:`cianet.evaluation.plots`). Its validation images, when it has them, are
    scored too, to choose the probability threshold of ``val_threshold`` (:func:`cianet.run.scoring.add_val_threshold`).

    ``precision``: fp32 | bf16 | auto (:mod:`cianet.run.precision`); default: the run's ``run.precision``, so
    that the figures are those training wrote. What was used is recorded in metrics.json. Another data set
    is scored by :func:`cianet.evaluation.cross_dataset.evaluate_on_dataset` instead (``cianet evaluate --out``)."""
    check_setting(precision)  # before the run is loaded
    if Path(run_dir).is_file():  # --run R/checkpoint.pt: the run is the folder holding it
        run_dir = Path(run_dir).parent
    run = load_run(run_dir, device, data_root, dataset=dataset)
    precision = resolve_precision(
        precision or run.cfg.run.precision, run.device, what="--precision" if precision else "run.precision"
    )
    # scoring only: BatchNorm folded, channels-last (the same function, faster: cianet.models.folding)
    net = for_inference(run.model)
    kw = dict(
        align_net=run.align_net,
        upsample=True,
        rescale=run.cfg.loss.mil_rescale,
        precision=precision,
        channels_last=True,
    )
    metrics = evaluate(net, run.test_loader, run.device, progress=progress, keep_predictions=True, **kw)
    # the threshold of the calibration-free localization, chosen on the validation images (none: no split)
    val = None if run.val_loader is None else evaluate(net, run.val_loader, run.device, progress=False, **kw)
    add_val_threshold(metrics, val)
    if n_boot:
        metrics["ci"] = bootstrap_intervals(metrics, n_boot, seed=int(run.cfg.run.seed))
    classes = label_set_from(run.cfg.data.labels, run.cfg.data.box_labels).names  # the run's data set's
    metrics["plots"] = write_evaluation_plots(run_dir, metrics, list(classes))
    write_metrics(run_dir, metrics, title=f"{run.cfg.model.kind} ({run.description})")
    write_pairing_record(run.pairing, run.data, run_dir)  # negatives.csv: the pairs these figures were scored with
    return metrics


def bootstrap_intervals(
    metrics: dict[str, Any], n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Any]:
    """Bootstrap intervals of the mean AUC (test images resampled; ranked by the evidence where present), of the
    class-mean localization accuracy at each T(IoU) and of the pointing game (boxes resampled within their
    class), from ``evaluate(..., keep_predictions=True)``."""
    out: dict[str, Any] = {"n_boot": int(n_boot), "confidence": float(confidence), "auc": None, "localization": {}}
    mean_auc = metrics.get("auc", {}).get("Mean")
    if len(metrics["scores"]) and mean_auc is not None and math.isfinite(mean_auc):  # else no class has both labels
        ranks = metrics["evidence"] if metrics.get("evidence") is not None else metrics["scores"]
        out["auc"] = auc_ci(ranks, metrics["labels"], n_boot=n_boot, seed=seed, confidence=confidence)
    if len(metrics["ious"]):
        for t in metrics["localization"]:
            out["localization"][t] = localization_ci(
                metrics["ious"],
                metrics["box_classes"],
                threshold=float(t),
                n_boot=n_boot,
                seed=seed,
                confidence=confidence,
            )
        if metrics.get("pointing") is not None:
            out["pointing"] = class_mean_ci(
                metrics["pointing"], metrics["box_classes"], n_boot=n_boot, seed=seed, confidence=confidence
            )
    return out

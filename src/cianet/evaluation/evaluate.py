"""``cianet evaluate``: a finished run, rebuilt as it trained, scored on its own test split.

The scoring itself (paper section 4.1) is :func:`cianet.run.scoring.evaluate`, shared with training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


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


def load_run(run_dir: str | Path, device: str = "auto", data_root: str | None = None,
             progress: bool = False) -> LoadedRun:
    """Load a run's checkpoint and rebuild its own test split (and negatives, alignment) as it trained.

    Reads the run folder (checkpoint, ``pairs.json``); writes nothing.
    """
    from cianet.run.checkpoints import load_alignment, load_checkpoint, model_from_checkpoint
    from cianet.run.device import resolve_device
    from cianet.run.loaders import make_loaders
    from cianet.run.protocol import build_run_data

    run_dir = Path(run_dir)
    dev = resolve_device(device)
    model, cfg = model_from_checkpoint(load_checkpoint(run_dir), dev)
    if data_root:
        cfg.data.data_root = data_root
    cfg.run.out, cfg.run.progress = str(run_dir), progress
    data = build_run_data(cfg)
    _, _, test_ds, test_loader = make_loaders(cfg, data)
    align_net = load_alignment(cfg.align.checkpoint, dev).net if cfg.align.checkpoint else None
    return LoadedRun(model, cfg, data.description, test_ds, test_loader, align_net, dev)


def evaluate_run(run_dir: str | Path, device: str = "auto", progress: bool = True, data_root: str | None = None,
                 keep_predictions: bool = False) -> dict[str, Any]:
    """Re-evaluate a finished run on its own test split; writes metrics.json/md into the run folder."""
    from cianet.run.scoring import evaluate, write_metrics

    run = load_run(run_dir, device, data_root)
    metrics = evaluate(run.model, run.test_loader, run.device, align_net=run.align_net, progress=progress,
                       upsample=True, keep_predictions=keep_predictions, rescale=run.cfg.loss.mil_rescale)
    write_metrics(run_dir, metrics, title=f"{run.cfg.model.kind} ({run.description})")
    return metrics

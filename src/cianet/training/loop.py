"""Training CIA-Net and the baseline: ``train_one_epoch`` and ``fit`` (checkpoints, resume, logging, DDP).

One training step (paper sections 3.2-3.3):
  1. optionally align the positive and its negative with the frozen alignment network (eq. 1), moving the
     boxes into the aligned frame;
  2. logits = model(pos, neg): (B, C, h, w) class-wise grid logits;
  3. grid targets from the boxes (a cell is positive iff it overlaps a box), loss of eq. 6: grid BCE (eq. 4)
     for (image, class) pairs with a box, MIL (eq. 5) for all others;
  4. optimizer step (the paper: SGD with Nesterov momentum; cianet.training.schedule), stop with a clear error
     on a non-finite loss.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cianet.config import Config, resolve_paths, save_config
from cianet.errors import NonFiniteLossError
from cianet.run.checkpoints import (
    CHECKPOINT,
    checkpoint_payload,
    load_alignment,
    load_checkpoint,
    resume_state,
    save_checkpoint,
)
from cianet.run.device import distributed_info, init_distributed, resolve_device, seed_everything
from cianet.run.forward import align_batch, network_inputs
from cianet.run.loaders import image_source, make_loaders, make_val_loader
from cianet.run.networks import build_network
from cianet.run.pairing import pair_negatives, save_pairs, write_pairing_record
from cianet.run.precision import autocast, resolve_precision
from cianet.run.protocol import build_run_data, check_same_split, write_split_file
from cianet.run.run_folder import claim_run_folder
from cianet.run.scoring import add_val_threshold, evaluate, write_metrics
from cianet.training.schedule import LrSchedule, build_optimizer, build_scheduler
from cianet.utils.output_folders import output_lock
from cianet.utils.progress import batch_progress, dataset_size


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    device: torch.device,
    epoch: int,
    *,
    cfg: Config | None = None,
    align_net: nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
    log=None,
    progress: bool = True,
    precision: str | None = None,
    schedule: LrSchedule | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns the epoch's mean losses. Raises NonFiniteLossError on NaN/inf.

    ``schedule``: sets the lr before every step (:mod:`cianet.training.schedule`); None leaves it as it is.

    ``precision``: "fp32", "bf16" or "fp16" (:func:`cianet.run.precision.resolve_precision`); default: what
    ``cfg.run.precision`` resolves to on ``device``.
    """
    # lazy: tests replace cianet.losses.cianet_loss
    from cianet.losses import cianet_loss, padded_grid_targets

    cfg = cfg or Config()
    model.train()
    if precision is None:
        precision = resolve_precision(cfg.run.precision, device, cuda_amp=cfg.optim.amp, what="run.precision")
    sums = {"loss": 0.0, "box": 0.0, "mil": 0.0}
    n = 0
    bar = batch_progress(
        loader, f"epoch {epoch + 1}/{cfg.optim.epochs}", dataset_size(loader), disable=not progress, leave=False
    )  # counts images
    steps = len(loader) if hasattr(loader, "__len__") else 0
    for step, batch in enumerate(bar):
        if schedule is not None:
            schedule.set(epoch, step, steps)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        batch = align_batch(align_net, batch)
        pos, neg = network_inputs(batch, cfg.optim.channels_last)
        with autocast(precision, device):
            out = model(pos, neg)
        logits = out["logits"].float()  # (B, C, h, w)
        size, grid = (pos.shape[-1], pos.shape[-2]), (logits.shape[-1], logits.shape[-2])  # (W, H) pairs
        targets = padded_grid_targets(batch["boxes"], size, grid, logits.shape[1])  # (B, C, h, w)
        step_losses = cianet_loss(
            logits, batch["labels"], targets, batch["box_mask"], beta_b=cfg.loss.beta_b, rescale=cfg.loss.mil_rescale
        )
        loss = step_losses["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                f"(box term {step_losses['box'].item()}, MIL term {step_losses['mil'].item()}): lower optim.lr "
                "or set optim.grad_clip; the last good checkpoint is kept"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
        bsz = pos.shape[0]
        n += bsz
        for key in sums:
            sums[key] += float(step_losses[key].detach()) * bsz
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
        if log is not None and step % 20 == 0:
            log({"event": "step", "epoch": epoch, "step": step, "loss": float(loss.detach())})
    return {k: v / max(n, 1) for k, v in sums.items()}


class JsonlLog:
    """Append-only JSON-lines log of a run (one object per line, flushed at once)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def __call__(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def fit(cfg: Config, resume: bool = False) -> Path:
    """Train a model as ``cfg`` says; write checkpoints, logs and metrics into cfg.run.out. Returns the folder.

    Only rank 0 writes (config, split, negative pairs, checkpoints, logs, metrics) under torchrun. It first
    claims the run folder (:mod:`cianet.run.run_folder`: a folder that is not a ``train`` run is refused, never
    written into) and holds its lock meanwhile: a second ``train`` into the same folder is refused.
    """
    if distributed_info()[0] != 0:
        return _fit(cfg, resume)
    claim_run_folder(cfg.run.out, "train")
    with output_lock(cfg.run.out, "cianet train"):
        return _fit(cfg, resume)


def _fit(cfg: Config, resume: bool) -> Path:
    device = resolve_device(cfg.run.device)
    precision = resolve_precision(cfg.run.precision, device, cuda_amp=cfg.optim.amp, what="run.precision")
    rank, world = init_distributed(device)
    is_main = rank == 0
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    out = Path(cfg.run.out)
    state, cfg = resume_state(out / CHECKPOINT, load_checkpoint, cfg, resume)
    cfg = resolve_paths(cfg)  # the saved config means the same files from any folder (relocatable runs)
    start_epoch = 0 if state is None else int(state["epoch"]) + 1
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.run.seed + rank)
    data = build_run_data(cfg)  # records the data set's classes in cfg.data.labels (saved with the run)
    if is_main:
        save_config(cfg, out / "config.yaml")
    if state is not None:
        check_same_split(out, data)  # a resumed run continues on the lists it started with
    if is_main:
        write_split_file(out, data)
    model, optimizer, scheduler, scaler = _build_training(cfg, device, precision, state, world)
    align_net = load_alignment(cfg.align.checkpoint, device).net if cfg.align.checkpoint else None
    pairing = pair_negatives(cfg, data, image_source(cfg, data.index), align_net)
    if is_main:
        save_pairs(pairing, out)
        write_pairing_record(pairing, data, out)  # negatives.csv / .json: what every image is paired with, and why
    _, train_loader, _, test_loader = make_loaders(cfg, data, rank, world, pairing)
    _, val_loader = make_val_loader(cfg, data, pairing)
    run = _Run(
        cfg,
        out,
        device,
        precision,
        is_main,
        model,
        optimizer,
        scheduler,
        scaler,
        align_net,
        log=JsonlLog(out / "log.jsonl", enabled=is_main),
        writer=_tensorboard(out, cfg) if is_main else None,
        progress=cfg.run.progress and is_main,
    )
    if start_epoch >= cfg.optim.epochs and is_main:
        print(f"{out}: all {cfg.optim.epochs} epochs already trained", file=sys.stderr)
    val_final = None  # the last epoch's validation metrics: they choose the calibration-free threshold
    for epoch in range(start_epoch, cfg.optim.epochs):
        val_final = _train_epoch(run, epoch, train_loader, val_loader)
    if is_main:  # the test images, once: the last epoch's weights (no model selection, docs/method.md)
        _final_evaluation(run, test_loader, val_loader, val_final, title=f"{cfg.model.kind} ({data.description})")
    if world > 1:
        torch.distributed.barrier()
    return out


@dataclass
class _Run:
    """What the epochs of a training run and its final evaluation share."""

    cfg: Config
    out: Path
    device: torch.device
    precision: str
    is_main: bool  # rank 0: the only process that writes
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LrSchedule
    scaler: Any
    align_net: nn.Module | None
    log: JsonlLog
    writer: Any  # TensorBoard's SummaryWriter (run.tensorboard) or None
    progress: bool

    def evaluate(self, loader, **kwargs: Any) -> dict[str, Any]:
        """:func:`cianet.run.scoring.evaluate` of the model as trained, on the test-time grid."""
        return evaluate(
            self.model,
            loader,
            self.device,
            align_net=self.align_net,
            upsample=True,
            channels_last=self.cfg.optim.channels_last,
            rescale=self.cfg.loss.mil_rescale,
            precision=self.precision,
            **kwargs,
        )


def _build_training(cfg: Config, device: torch.device, precision: str, state: dict | None, world: int):
    """The network, optimizer, scheduler and gradient scaler; restored from ``state`` when resuming."""
    model = build_network(cfg).to(device)
    if cfg.optim.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")  # bfloat16 needs no loss scaling
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, optimizer, scheduler, scaler


def _train_epoch(run: _Run, epoch: int, train_loader, val_loader) -> dict[str, Any] | None:
    """Train one epoch, validate when due (rank 0), checkpoint and log; the validation metrics if this was the
    last epoch and it validated, else None."""
    cfg = run.cfg
    t0 = time.time()
    losses = train_one_epoch(
        run.model,
        run.optimizer,
        train_loader(epoch),
        run.device,
        epoch,
        cfg=cfg,
        align_net=run.align_net,
        scaler=run.scaler,
        log=run.log,
        progress=run.progress,
        precision=run.precision,
        schedule=run.scheduler,
    )
    record = {
        "event": "epoch",
        "epoch": epoch,
        "lr": run.optimizer.param_groups[0]["lr"],  # of the epoch's last step
        "precision": run.precision,
        "seconds": round(time.time() - t0, 2),
        **{f"train_{k}": v for k, v in losses.items()},
    }
    last = epoch == cfg.optim.epochs - 1
    due = last or bool(cfg.run.eval_every and (epoch + 1) % cfg.run.eval_every == 0)
    val_final = None
    if run.is_main and val_loader is not None and due:  # validation images only; the test images wait for the end
        m = run.evaluate(val_loader, progress=False)
        record.update(
            {
                "val_auc_mean": m["auc"]["Mean"],
                "val_loc_mean_0.5": m["localization"].get("0.5", {}).get("Mean"),
                "val_images": m["n_images"],
                "val_boxes": m["n_boxes"],
            }
        )
        val_final = m if last else None
    if run.is_main:
        payload = checkpoint_payload(
            run.model,
            cfg,
            epoch,
            optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict(),
            scaler=run.scaler.state_dict(),
        )
        save_checkpoint(payload, run.out / CHECKPOINT)
        run.log(record)
        if run.writer is not None:
            for key, val in record.items():
                if isinstance(val, (int, float)) and key not in ("epoch", "time") and math.isfinite(val):
                    run.writer.add_scalar(key, val, epoch)
        if run.progress:
            print(
                f"epoch {epoch + 1}/{cfg.optim.epochs}: loss {losses['loss']:.4f} ({record['seconds']}s)",
                file=sys.stderr,
            )
    return val_final


def _final_evaluation(run: _Run, test_loader, val_loader, val_final: dict[str, Any] | None, title: str) -> None:
    """The test images, once, with the threshold chosen on validation: metrics.json and the final log line."""
    cfg = run.cfg
    if val_loader is not None and val_final is None:  # resumed after the last epoch
        val_final = run.evaluate(val_loader, progress=False)
    metrics = run.evaluate(test_loader, progress=run.progress, keep_predictions=True)
    add_val_threshold(metrics, val_final)
    write_metrics(run.out, metrics, title=title)
    run.log(
        {
            "event": "final",
            "weights": f"epoch {cfg.optim.epochs - 1} (last)",
            "precision": run.precision,
            "test_auc_mean": metrics["auc"]["Mean"],
            "test_localization_mean": {t: v["Mean"] for t, v in metrics["localization"].items()},
            "test_images": metrics["n_images"],
            "test_boxes": metrics["n_boxes"],
        }
    )
    if run.writer is not None:
        run.writer.close()


def _tensorboard(out: Path, cfg: Config):
    if not cfg.run.tensorboard:
        return None
    try:
        # lazy: tensorboard is an optional dependency (pip install cianet[tensorboard])
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)", file=sys.stderr)
        return None
    return SummaryWriter(str(out / "tb"))

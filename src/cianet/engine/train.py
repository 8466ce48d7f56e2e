"""Training CIA-Net and the baseline: ``train_one_epoch`` and ``fit`` (checkpoints, resume, logging, DDP).

One training step (paper sections 3.2-3.3):
  1. optionally align the positive and its negative with the frozen alignment network (eq. 1), moving the
     boxes into the aligned frame;
  2. logits = model(pos, neg): (B, C, h, w) class-wise grid logits;
  3. grid targets from the boxes (a cell is positive iff it overlaps a box), loss of eq. 6: grid BCE (eq. 4)
     for (image, class) pairs with a box, MIL (eq. 5) for all others;
  4. SGD step (Nesterov), stop with a clear error on a non-finite loss.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cianet.config import Config, config_from_dict, save_config
from cianet.labels import LABELS, NUM_CLASSES
from cianet.utils.atomic import atomic_torch_save, atomic_write_json
from cianet.utils.progress import progress_bar

CHECKPOINT = "checkpoint.pt"
FORMAT_VERSION = 1


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


# ----------------------------------------------------------------------------------------------- set-up
def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available (use --device cpu or auto)")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def distributed_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) when not distributed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: torch.device) -> tuple[int, int]:
    rank, world, local = distributed_info()
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(backend=backend)
    return rank, world


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0, weight_decay=o.weight_decay
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.optim.lr_step), gamma=cfg.optim.lr_gamma)


def build_network(cfg: Config) -> nn.Module:
    from cianet.models.cianet import build_model

    m = cfg.model
    return build_model(
        m.kind,
        num_classes=NUM_CLASSES,
        backbone=m.backbone,
        pretrained=m.pretrained,
        test_upsample=m.test_upsample,
        head_channels=m.head_channels,
    )


# ------------------------------------------------------------------------------------------- one step
@torch.no_grad()
def align_batch(align_net: nn.Module | None, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Warp image and negative into the canonical frame; move the boxes along (still (B, K, 5), S frame).

    Adds ``params`` (B, 5), the image's alignment parameters. Without a network this is the identity.
    """
    if align_net is None:
        return batch
    from cianet.models.alignment import boxes_to_aligned

    out = dict(batch)
    pos = align_net(batch["image"])
    out["image"], out["params"] = pos["aligned"], pos["params"]
    if "neg" in batch:
        out["neg"] = align_net(batch["neg"])["aligned"]
    boxes = batch["boxes"].clone()
    s = batch["image"].shape[-1]
    for i in range(boxes.shape[0]):
        valid = boxes[i, :, 0] >= 0
        if valid.any():
            moved = boxes_to_aligned(boxes[i, valid, 1:].cpu().double().numpy(), pos["params"][i].cpu().double().numpy(), (s, s), (s, s))
            boxes[i, valid, 1:] = torch.as_tensor(np.asarray(moved), dtype=boxes.dtype, device=boxes.device)
    out["boxes"] = boxes
    return out


def network_inputs(batch: dict[str, torch.Tensor], channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from cianet.models.backbones import gray_to_input

    pos, neg = gray_to_input(batch["image"]), gray_to_input(batch["neg"])
    if channels_last:
        pos, neg = pos.contiguous(memory_format=torch.channels_last), neg.contiguous(memory_format=torch.channels_last)
    return pos, neg


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
) -> dict[str, float]:
    """One pass over ``loader``; returns the epoch's mean losses. Raises NonFiniteLossError on NaN/inf."""
    from cianet.losses import cianet_loss, padded_grid_targets

    cfg = cfg or Config()
    model.train()
    amp = bool(cfg.optim.amp and device.type == "cuda")
    sums = {"loss": 0.0, "box": 0.0, "mil": 0.0}
    n = 0
    bar = progress_bar(loader, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", disable=not progress, leave=False)
    for step, batch in enumerate(bar):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        batch = align_batch(align_net, batch)
        pos, neg = network_inputs(batch, cfg.optim.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16, enabled=amp):
            out = model(pos, neg)
        logits = out["logits"].float()  # (B, C, h, w)
        size, grid = (pos.shape[-1], pos.shape[-2]), (logits.shape[-1], logits.shape[-2])  # (W, H) pairs
        targets = padded_grid_targets(batch["boxes"], size, grid, logits.shape[1])  # (B, C, h, w)
        losses = cianet_loss(
            logits, batch["labels"], targets, batch["box_mask"], beta_b=cfg.loss.beta_b, rescale=cfg.loss.mil_rescale
        )
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                f"(box term {losses['box'].item()}, MIL term {losses['mil'].item()}): lower optim.lr "
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
            sums[key] += float(losses[key].detach()) * bsz
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
        if log is not None and step % 20 == 0:
            log({"event": "step", "epoch": epoch, "step": step, "loss": float(loss.detach())})
    return {k: v / max(n, 1) for k, v in sums.items()}


# ------------------------------------------------------------------------------------------ run level
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


def checkpoint_payload(model: nn.Module, cfg: Config, epoch: int, **extra: Any) -> dict[str, Any]:
    """What every checkpoint carries: weights, config, label names, input size, normalization."""
    from cianet.models.backbones import IMAGENET_MEAN, IMAGENET_STD

    net = model.module if hasattr(model, "module") else model
    return {
        "format_version": FORMAT_VERSION,
        "kind": cfg.model.kind,
        "model": net.state_dict(),
        "config": cfg.to_dict(),
        "labels": list(LABELS),
        "input_size": cfg.data.image_size,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input": "gray [0,1] x3"},
        "epoch": epoch,
        **extra,
    }


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a cianet checkpoint safely (weights_only=True); clear errors for missing or foreign files."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holding arbitrary objects
        raise ValueError(f"{path}: not a readable cianet checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a cianet checkpoint (no model weights/config inside)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: made by a newer cianet (format {ckpt['format_version']}); upgrade cianet")
    if list(ckpt.get("labels", LABELS)) != list(LABELS):
        raise ValueError(f"{path}: label names differ from this cianet's LABELS")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[nn.Module, Config]:
    cfg = config_from_dict(ckpt["config"], source="checkpoint config")
    cfg.model.pretrained = False  # the weights come from the checkpoint
    model = build_network(cfg)
    model.load_state_dict(ckpt["model"])
    return model, cfg


def load_alignment(path: str | None, device: torch.device) -> nn.Module | None:
    if not path:
        return None
    from cianet.engine.align import load_alignment_net

    net = load_alignment_net(path).to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def make_loaders(cfg: Config, data, rank: int = 0, world: int = 1):
    """Datasets and loaders for a run: (train_ds, train_loader_factory(epoch), test_ds, test_loader)."""
    from torch.utils.data import DataLoader

    from cianet.engine.dataset import ImageSource, PairedXrayDataset, collate
    from cianet.engine.negatives_run import pairing_for_run

    index = data.index
    source = ImageSource(cfg.data.image_size, cfg.data.cache, {r.name: r.path for r in index.records})
    pair_train, pair_test, canonical = pairing_for_run(cfg, data, source)
    labels, boxes = data.labels, data.boxes
    train_ds = PairedXrayDataset(data.train, labels, boxes, source, data.box_names, None, canonical, pair_fn=pair_train)
    test_names = list(data.test) + list(data.auc_extra)
    test_ds = PairedXrayDataset(test_names, labels, boxes, source, set(data.test), pair_test(0), canonical)

    def train_loader(epoch: int):
        train_ds.set_epoch(epoch)
        if world > 1:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.run.seed)
            sampler.set_epoch(epoch)
            kw = {"sampler": sampler}
        else:
            g = torch.Generator().manual_seed(cfg.run.seed * 1000 + epoch)  # same order after a resume
            kw = {"shuffle": True, "generator": g}
        return DataLoader(
            train_ds, batch_size=cfg.optim.batch_size, num_workers=cfg.data.workers, collate_fn=collate,
            drop_last=len(train_ds) > cfg.optim.batch_size, persistent_workers=False,
            pin_memory=torch.cuda.is_available(), **kw,
        )

    test_loader = DataLoader(
        test_ds, batch_size=max(1, cfg.optim.batch_size), shuffle=False, num_workers=cfg.data.workers, collate_fn=collate
    )
    return train_ds, train_loader, test_ds, test_loader


def fit(cfg: Config, resume: bool = False) -> Path:
    """Train a model as ``cfg`` says; write checkpoints, logs and metrics into cfg.run.out. Returns the folder."""
    from cianet.engine.evaluate import evaluate, write_metrics
    from cianet.engine.pipeline import build_run_data

    device = resolve_device(cfg.run.device)
    rank, world = init_distributed(device)
    is_main = rank == 0
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    out = Path(cfg.run.out)
    ckpt_path = out / CHECKPOINT
    start_epoch = 0
    state = None
    if ckpt_path.exists():
        if not resume:
            raise ValueError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
        state = load_checkpoint(ckpt_path)
        saved = config_from_dict(state["config"], source=str(ckpt_path))
        saved.run.out, saved.run.device, saved.run.progress = cfg.run.out, cfg.run.device, cfg.run.progress
        cfg = saved  # a resumed run keeps its own recipe
        start_epoch = int(state["epoch"]) + 1
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    seed_everything(cfg.run.seed + rank)
    data = build_run_data(cfg)
    if is_main:
        atomic_write_json(out / "split.json", {
            "description": data.description, "train": data.train, "test": data.test, "auc_extra": data.auc_extra,
            "box_supervised": sorted(data.box_names), "excluded": data.excluded,
        })
    model = build_network(cfg).to(device)
    if cfg.optim.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=bool(cfg.optim.amp and device.type == "cuda"))
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    align_net = load_alignment(cfg.align.checkpoint, device)
    _, train_loader, test_ds, test_loader = make_loaders(cfg, data, rank, world)
    log = JsonlLog(out / "log.jsonl", enabled=is_main)
    writer = _tensorboard(out, cfg) if is_main else None
    progress = cfg.run.progress and is_main
    if start_epoch >= cfg.optim.epochs and is_main:
        print(f"{out}: all {cfg.optim.epochs} epochs already trained", file=sys.stderr)
    for epoch in range(start_epoch, cfg.optim.epochs):
        t0 = time.time()
        losses = train_one_epoch(model, optimizer, train_loader(epoch), device, epoch, cfg=cfg,
                                 align_net=align_net, scaler=scaler, log=log, progress=progress)
        scheduler.step()
        record = {"event": "epoch", "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                  "seconds": round(time.time() - t0, 2), **{f"train_{k}": v for k, v in losses.items()}}
        last = epoch == cfg.optim.epochs - 1
        if is_main and cfg.run.eval_every and ((epoch + 1) % cfg.run.eval_every == 0) and not last:
            m = evaluate(model, test_loader, device, align_net=align_net, dataset=test_ds, progress=False,
                         upsample=True, channels_last=cfg.optim.channels_last)
            record.update({"val_auc_mean": m["auc"]["Mean"], "val_loc_mean_0.5": m["localization"].get("0.5", {}).get("Mean")})
        if is_main:
            payload = checkpoint_payload(model, cfg, epoch, optimizer=optimizer.state_dict(),
                                         scheduler=scheduler.state_dict(), scaler=scaler.state_dict())
            atomic_torch_save(payload, ckpt_path)
            log(record)
            if writer is not None:
                for key, val in record.items():
                    if isinstance(val, (int, float)) and key not in ("epoch", "time") and val is not None and math.isfinite(val):
                        writer.add_scalar(key, val, epoch)
            if progress:
                print(f"epoch {epoch + 1}/{cfg.optim.epochs}: loss {losses['loss']:.4f} ({record['seconds']}s)", file=sys.stderr)
    if is_main:
        metrics = evaluate(model, test_loader, device, align_net=align_net, dataset=test_ds, progress=progress,
                           upsample=True, channels_last=cfg.optim.channels_last, keep_predictions=True)
        write_metrics(out, metrics, title=f"{cfg.model.kind} ({data.description})")
        log({"event": "final", "auc_mean": metrics["auc"]["Mean"],
             "localization_mean": {t: v["Mean"] for t, v in metrics["localization"].items()}})
        if writer is not None:
            writer.close()
    if world > 1:
        torch.distributed.barrier()
    return out


def _tensorboard(out: Path, cfg: Config):
    if not cfg.run.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)", file=sys.stderr)
        return None
    return SummaryWriter(str(out / "tb"))

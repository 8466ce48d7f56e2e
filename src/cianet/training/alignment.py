"""Training the alignment network (paper 3.1) against the canonical chest.

The network is trained alone, before CIA-Net. Its loss (docs/method.md, "Structure loss" and "Consistency
under known warps"):

- the structure loss between the aligned image and the canonical chest: feature reconstruction (eq. 2) plus
  pixel consistency (MSE), each divided by its value on the first batch (``align.balance``) so that both
  count, computed on the regressor's ``align.input_size`` copy;
- ``align.consistency_weight`` times the consistency loss: every batch is also warped by known random affine
  maps ``W``, and the predictions on the warped copies must compose with ``W`` to the predictions on the
  originals (``cianet.models.alignment.consistency_loss``). No ground truth is used.

The structure loss applies to the originals and to their warped copies. Labels are never used, so any image
of the data set may serve; ``align.max_images`` of them are drawn with the seed. The bounds are centred on the
canonical crop (``align.center``; :func:`cianet.run.networks.alignment_net_kwargs`). The checkpoint
``align.pt`` (:mod:`cianet.run.checkpoints`) carries the network's constructor arguments (bounds included),
the canonical chest, the loss scales and the config; every term is logged per epoch in ``log.jsonl``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cianet.config import Config, resolve_paths, save_config
from cianet.data.cache import ImageCache
from cianet.data.canonical import load_canonical
from cianet.errors import InputError, NonFiniteLossError, UsageError
from cianet.models.alignment import StructureLoss, consistency_loss, random_warp_params, warp
from cianet.run.checkpoints import ALIGN_CHECKPOINT, alignment_payload, read_alignment_checkpoint, resume_state
from cianet.run.datasets import PairedXrayDataset, collate
from cianet.run.device import resolve_device, seed_everything
from cianet.run.loaders import image_source
from cianet.run.networks import alignment_net_kwargs, build_alignment_net
from cianet.run.protocol import load_index
from cianet.run.run_folder import claim_run_folder
from cianet.training.loop import JsonlLog
from cianet.utils.output_folders import output_lock
from cianet.utils.progress import batch_progress

#: The terms logged per epoch (means over the epoch's images).
LOGGED_TERMS = (
    "loss",
    "structure",
    "feat",
    "pixel",
    "feat_weighted",
    "pixel_weighted",
    "consistency",
    "consistency_weighted",
)


def cosine_lr(base: float, step: int, total: int) -> float:
    """``base`` decayed by half a cosine from step 0 to ``total`` (0 at the end)."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def train_alignment(cfg: Config, resume: bool = False) -> Path:
    """Train the alignment network; writes ``align.pt`` (every epoch, atomically), ``config.yaml`` and
    ``log.jsonl`` in run.out.

    Per batch ``x`` (downsized to ``align.input_size``): random warps ``W`` give ``x' = W x``; one pass
    predicts ``P`` for ``x`` and ``P'`` for ``x'``; the loss is the structure loss of both aligned copies
    plus ``consistency_weight * consistency_loss(P, P', W)``. Claims the run folder first (a folder that is
    not a ``train-align`` run is refused, :mod:`cianet.run.run_folder`) and holds its lock while it writes.
    """
    claim_run_folder(cfg.run.out, "train-align")
    with output_lock(cfg.run.out, "cianet train-align"):
        return _train_alignment(cfg, resume)


def _train_alignment(cfg: Config, resume: bool) -> Path:
    # lazy: tests replace cianet.run.checkpoints.save_checkpoint to kill a run right after a save
    from cianet.run.checkpoints import save_checkpoint

    if not cfg.align.canonical:
        raise UsageError("train-align needs a canonical chest: --canonical canonical.png (from `cianet canonical`)")
    device = resolve_device(cfg.run.device)
    out = Path(cfg.run.out)
    ckpt_path = out / ALIGN_CHECKPOINT
    state, cfg = resume_state(
        ckpt_path, lambda p: read_alignment_checkpoint(p)[1], cfg, resume, what="an alignment run"
    )
    a = cfg.align  # as given: the canonical chest is read from the path as the user wrote it
    _check_align_settings(a)
    cfg = resolve_paths(cfg)  # the saved config means the same files from any folder (relocatable runs)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    seed_everything(cfg.run.seed)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    index = load_index(cfg)
    canonical = torch.from_numpy(load_canonical(a.canonical, cfg.data.image_size))  # (S, S), stored in align.pt
    ds = PairedXrayDataset(_alignment_images(cfg, index), {}, {}, image_source(cfg, index))
    run = _AlignRun.build(cfg, state, canonical, device)
    log = JsonlLog(out / "log.jsonl")
    for epoch in range(run.start, cfg.align.epochs):
        t0 = time.time()
        means = _align_epoch(run, ds, epoch)
        scales = {"feat_scale": run.loss_fn.feat_scale, "pixel_scale": run.loss_fn.pixel_scale}
        save_checkpoint(
            alignment_payload(run.net, run.opt, cfg, epoch, canonical, net_kwargs=run.net_kwargs, loss_scales=scales),
            ckpt_path,
        )
        log(
            {
                "event": "epoch",
                "epoch": epoch,
                **{k: round(v, 6) for k, v in means.items()},
                "structure_loss": round(means["structure"], 6),
                "loss_scales": scales,
                "seconds": round(time.time() - t0, 2),
            }
        )
        if cfg.run.progress:
            _print_epoch(epoch, cfg.align.epochs, means)
    return out


def _check_align_settings(a) -> None:
    if a.lr_schedule not in ("cosine", "constant"):
        raise UsageError(f"align.lr_schedule must be 'cosine' or 'constant', got {a.lr_schedule!r}")
    if a.consistency_weight < 0:
        raise UsageError(f"align.consistency_weight must be >= 0, got {a.consistency_weight}")


def _alignment_images(cfg: Config, index) -> list[str]:
    """The images to train on: every readable one (and every cached one), ``align.max_images`` of them drawn
    with the seed when there are more."""
    names = [r.name for r in index.records if r.path is not None]
    if cfg.data.cache:
        names = sorted(set(names) | set(ImageCache.open(cfg.data.cache).names))
    rng = np.random.default_rng(cfg.run.seed)
    if cfg.align.max_images and len(names) > cfg.align.max_images:
        names = sorted(rng.choice(names, size=cfg.align.max_images, replace=False).tolist())
    if not names:
        raise InputError(f"no readable image under {cfg.data.data_root} to train the alignment network on")
    return names


@dataclass
class _AlignRun:
    """The network, its loss and optimizer, and where training (re)starts."""

    cfg: Config
    device: torch.device
    net: Any
    net_kwargs: dict
    loss_fn: Any
    opt: torch.optim.Optimizer
    target: torch.Tensor  # (1, 1, s, s): the canonical chest at the regressor's input size
    start: int
    calibrated: bool  # the loss scales are set (by align.balance's first batch, or from the checkpoint)

    @classmethod
    def build(cls, cfg: Config, state: dict | None, canonical: torch.Tensor, device: torch.device) -> _AlignRun:
        """A fresh network, or the checkpoint's ``state`` restored (weights, optimizer, loss scales)."""
        a = cfg.align
        net_kwargs = alignment_net_kwargs(cfg) if state is None else dict(state["net_kwargs"])
        net = build_alignment_net(cfg, pretrained=None if state is None else False, net_kwargs=net_kwargs).to(device)
        # The structure loss compares the regressor's downsized copy, warped, with the canonical chest at that size.
        target = net.downsize(canonical[None, None]).to(device)
        loss_fn = StructureLoss(
            a.feat_weight,
            a.pixel_weight,
            a.feature_net,
            feat_norm=a.feat_norm,
            pretrained=a.pretrained,
            seed=cfg.run.seed,
        ).to(device)
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=a.lr)
        run = cls(cfg, device, net, net_kwargs, loss_fn, opt, target, start=0, calibrated=not a.balance)
        if state is not None:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            run.start = int(state["epoch"]) + 1
            scales = state.get("loss_scales") or {}
            if scales:
                loss_fn.feat_scale, loss_fn.pixel_scale = float(scales["feat_scale"]), float(scales["pixel_scale"])
                run.calibrated = True
        return run


def _align_epoch(run: _AlignRun, ds, epoch: int) -> dict[str, float]:
    """One epoch over ``ds``; the means of :data:`LOGGED_TERMS` over its images."""
    cfg, a, opt = run.cfg, run.cfg.align, run.opt
    run.net.train()
    n = 0
    sums = dict.fromkeys(LOGGED_TERMS, 0.0)
    steps_per_epoch = max(1, math.ceil(len(ds) / a.batch_size))
    g = torch.Generator().manual_seed(cfg.run.seed * 1000 + epoch)
    g_warp = torch.Generator().manual_seed(cfg.run.seed * 1000 + epoch + 500_000)  # the known warps
    loader = DataLoader(
        ds, batch_size=a.batch_size, shuffle=True, generator=g, num_workers=cfg.data.workers, collate_fn=collate
    )
    bar = batch_progress(
        loader, f"align epoch {epoch + 1}/{a.epochs}", len(ds), disable=not cfg.run.progress, leave=False
    )  # counts images
    for step, batch in enumerate(bar):
        if a.lr_schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = cosine_lr(a.lr, epoch * steps_per_epoch + step, a.epochs * steps_per_epoch)
        x = run.net.downsize(batch["image"].to(run.device))  # (B, 1, s, s)
        b = x.shape[0]
        terms = _align_step(run, x, g_warp, epoch)
        for key, value in zip(LOGGED_TERMS, terms):
            sums[key] += float(value.detach()) * b
        n += b
    return {k: v / max(n, 1) for k, v in sums.items()}


def _align_step(run: _AlignRun, x: torch.Tensor, g_warp: torch.Generator, epoch: int) -> tuple:
    """One optimizer step on the batch ``x`` (B, 1, s, s) and its warped copies; the terms of :data:`LOGGED_TERMS`."""
    a, net, loss_fn, device = run.cfg.align, run.net, run.loss_fn, run.device
    b = x.shape[0]
    if a.consistency_weight > 0:
        warps = random_warp_params(b, g_warp, math.radians(a.warp_rotation), a.warp_scale, a.warp_shift).to(device)
        x = torch.cat([x, warp(x, warps)])  # originals, then their warped copies
    if not run.calibrated:  # the terms' values where training starts (the network's centre)
        with torch.no_grad():
            start_params = net.bound(torch.zeros(x.shape[0], 5, device=device))
            loss_fn.calibrate(warp(x, start_params, padding_mode=net.padding_mode), run.target)
        run.calibrated = True
    params = net.predict_params(x)
    s = loss_fn(warp(x, params, padding_mode=net.padding_mode), run.target)
    cons = consistency_loss(params[:b], params[b:], warps) if a.consistency_weight > 0 else params.new_zeros(())
    loss = s["total"] + a.consistency_weight * cons
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"non-finite alignment loss at epoch {epoch + 1}: lower align.lr")
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    return (
        loss,
        s["total"],
        s["feat"],
        s["pixel"],
        s["feat"] * loss_fn.feat_weight * loss_fn.feat_scale,
        s["pixel"] * loss_fn.pixel_weight * loss_fn.pixel_scale,
        cons,
        cons * a.consistency_weight,
    )


def _print_epoch(epoch: int, epochs: int, means: dict[str, float]) -> None:
    print(
        f"align epoch {epoch + 1}/{epochs}: loss {means['loss']:.4f} = "
        f"feature {means['feat_weighted']:.4f} "
        f"(raw {means['feat']:.3g}) + pixel {means['pixel_weighted']:.4f} (raw {means['pixel']:.3g}) "
        f"+ consistency {means['consistency_weighted']:.4f} (raw {means['consistency']:.3g})",
        file=sys.stderr,
    )

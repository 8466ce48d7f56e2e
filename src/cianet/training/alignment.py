"""Training the alignment network (paper 3.1) against the canonical chest.

The network is trained alone, before CIA-Net, to minimize the structure loss between the warped image and
the canonical chest: feature reconstruction (eq. 2) plus pixel consistency (MSE). Labels are never used,
so any image of the data set may serve; ``align.max_images`` of them are drawn with the seed.
The checkpoint ``align.pt`` (:mod:`cianet.run.checkpoints`) carries the network's constructor arguments, the
canonical chest and the config.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from cianet.config import Config, save_config
from cianet.errors import InputError, NonFiniteLossError, UsageError
from cianet.utils.progress import progress_bar


def train_alignment(cfg: Config, resume: bool = False) -> Path:
    """Train the alignment network; writes ``align.pt`` (every epoch, atomically) and ``config.yaml`` in run.out."""
    from torch.utils.data import DataLoader

    from cianet.data.canonical import load_canonical
    from cianet.models.alignment import StructureLoss
    from cianet.run.checkpoints import (ALIGN_CHECKPOINT, alignment_payload, read_alignment_checkpoint,
                                        resume_state, save_checkpoint)
    from cianet.run.datasets import PairedXrayDataset, collate
    from cianet.run.device import resolve_device, seed_everything
    from cianet.run.loaders import image_source
    from cianet.run.networks import build_alignment_net
    from cianet.run.protocol import load_index
    from cianet.training.loop import JsonlLog

    if not cfg.align.canonical:
        raise UsageError("train-align needs a canonical chest: --canonical canonical.png (from `cianet canonical`)")
    device = resolve_device(cfg.run.device)
    out = Path(cfg.run.out)
    ckpt_path = out / ALIGN_CHECKPOINT
    state, cfg = resume_state(ckpt_path, lambda p: read_alignment_checkpoint(p)[1], cfg, resume,
                              what="an alignment run")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    seed_everything(cfg.run.seed)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    index = load_index(cfg)
    size = cfg.data.image_size
    target = torch.from_numpy(load_canonical(cfg.align.canonical, size))[None, None].to(device)  # (1, 1, S, S)
    names = [r.name for r in index.records if r.path is not None]
    if cfg.data.cache:
        from cianet.data.cache import ImageCache

        names = sorted(set(names) | set(ImageCache.open(cfg.data.cache).names))
    rng = np.random.default_rng(cfg.run.seed)
    if cfg.align.max_images and len(names) > cfg.align.max_images:
        names = sorted(rng.choice(names, size=cfg.align.max_images, replace=False).tolist())
    if not names:
        raise InputError(f"no readable image under {cfg.data.data_root} to train the alignment network on")
    source = image_source(cfg, index)
    ds = PairedXrayDataset(names, {}, {}, source)
    net = build_alignment_net(cfg, pretrained=None if state is None else False).to(device)
    loss_fn = StructureLoss(cfg.align.feat_weight, cfg.align.pixel_weight, cfg.align.feature_net).to(device)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.align.lr)
    start = 0
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["epoch"]) + 1
    log = JsonlLog(out / "log.jsonl")
    for epoch in range(start, cfg.align.epochs):
        net.train()
        t0, total, n = time.time(), 0.0, 0
        g = torch.Generator().manual_seed(cfg.run.seed * 1000 + epoch)
        loader = DataLoader(ds, batch_size=cfg.align.batch_size, shuffle=True, generator=g,
                            num_workers=cfg.data.workers, collate_fn=collate)
        bar = progress_bar(loader, desc=f"align epoch {epoch + 1}/{cfg.align.epochs}", disable=not cfg.run.progress, leave=False)
        for batch in bar:
            x = batch["image"].to(device)  # (B, 1, S, S)
            aligned = net(x)["aligned"]
            losses = loss_fn(aligned, target)
            loss = losses["total"]
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"non-finite structure loss at alignment epoch {epoch + 1}: lower align.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * x.shape[0]
            n += x.shape[0]
        save_checkpoint(alignment_payload(net, opt, cfg, epoch, target[0, 0]), ckpt_path)
        log({"event": "epoch", "epoch": epoch, "structure_loss": total / max(n, 1), "seconds": round(time.time() - t0, 2)})
        if cfg.run.progress:
            print(f"align epoch {epoch + 1}/{cfg.align.epochs}: structure loss {total / max(n, 1):.4f}", file=sys.stderr)
    return out

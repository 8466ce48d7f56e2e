"""Training the alignment network (paper 3.1) against the canonical chest.

The network is trained alone, before CIA-Net, to minimize the structure loss between the warped image and
the canonical chest: feature reconstruction (eq. 2) plus pixel consistency (MSE). Labels are never used,
so any image of the data set may serve; ``align.max_images`` of them are drawn with the seed.
The checkpoint ``align.pt`` carries the network's constructor arguments, the canonical chest and the config.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cianet.config import Config, config_from_dict, save_config
from cianet.utils.atomic import atomic_torch_save
from cianet.utils.progress import progress_bar

ALIGN_CHECKPOINT = "align.pt"


def _net_kwargs(cfg: Config) -> dict[str, Any]:
    return {"backbone": cfg.align.backbone, "input_size": cfg.align.input_size}


def build_alignment_net(cfg: Config, pretrained: bool | None = None):
    from cianet.models.alignment import AlignmentNet

    return AlignmentNet(pretrained=cfg.align.pretrained if pretrained is None else pretrained, **_net_kwargs(cfg))


def read_alignment_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(file, contents) of ``align.pt`` (or a folder holding it), loaded with weights_only=True and checked."""
    path = Path(path)
    if path.is_dir():
        path = path / ALIGN_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"alignment checkpoint {path} does not exist (train one with `cianet train-align`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable alignment checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "alignment" or "net_kwargs" not in ckpt:
        raise ValueError(f"{path}: not an alignment checkpoint")
    return path, ckpt


def load_alignment_net(path: str | Path):
    """An AlignmentNet from ``align.pt`` (or a folder holding it)."""
    from cianet.models.alignment import AlignmentNet

    _, ckpt = read_alignment_checkpoint(path)
    net = AlignmentNet(pretrained=False, **ckpt["net_kwargs"])
    net.load_state_dict(ckpt["model"])
    return net


def _canonical_tensor(path: str, size: int) -> torch.Tensor:
    from cianet.data.io import load_xray, resize_gray

    return torch.from_numpy(resize_gray(load_xray(path), size))[None, None]  # (1, 1, S, S)


def train_alignment(cfg: Config, resume: bool = False) -> Path:
    """Train the alignment network; writes ``align.pt`` (every epoch, atomically) and ``config.yaml`` in run.out."""
    from torch.utils.data import DataLoader

    from cianet.engine.dataset import ImageSource, PairedXrayDataset, collate
    from cianet.engine.pipeline import load_index
    from cianet.engine.train import JsonlLog, resolve_device, seed_everything
    from cianet.models.alignment import StructureLoss

    if not cfg.align.canonical:
        raise ValueError("train-align needs a canonical chest: --canonical canonical.png (from `cianet canonical`)")
    device = resolve_device(cfg.run.device)
    out = Path(cfg.run.out)
    ckpt_path = out / ALIGN_CHECKPOINT
    state = None
    if ckpt_path.exists():
        if not resume:
            raise ValueError(f"{out} already holds an alignment run: pass --resume or choose another --out")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved = config_from_dict(state["config"], source=str(ckpt_path))
        saved.run.out, saved.run.device, saved.run.progress = cfg.run.out, cfg.run.device, cfg.run.progress
        cfg = saved
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    seed_everything(cfg.run.seed)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    index = load_index(cfg)
    size = cfg.data.image_size
    target = _canonical_tensor(cfg.align.canonical, size).to(device)
    names = [r.name for r in index.records if r.path is not None]
    if cfg.data.cache:
        from cianet.data.cache import ImageCache

        names = sorted(set(names) | set(ImageCache.open(cfg.data.cache).names))
    rng = np.random.default_rng(cfg.run.seed)
    if cfg.align.max_images and len(names) > cfg.align.max_images:
        names = sorted(rng.choice(names, size=cfg.align.max_images, replace=False).tolist())
    if not names:
        raise ValueError(f"no readable image under {cfg.data.data_root} to train the alignment network on")
    source = ImageSource(size, cfg.data.cache, {r.name: r.path for r in index.records})
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
                raise RuntimeError(f"non-finite structure loss at alignment epoch {epoch + 1}: lower align.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * x.shape[0]
            n += x.shape[0]
        payload = {
            "kind": "alignment", "format_version": 1, "model": net.state_dict(), "optimizer": opt.state_dict(),
            "epoch": epoch, "config": cfg.to_dict(), "net_kwargs": _net_kwargs(cfg),
            "canonical": target[0, 0].cpu(), "input_size": size,
        }
        atomic_torch_save(payload, ckpt_path)
        log({"event": "epoch", "epoch": epoch, "structure_loss": total / max(n, 1), "seconds": round(time.time() - t0, 2)})
        if cfg.run.progress:
            print(f"align epoch {epoch + 1}/{cfg.align.epochs}: structure loss {total / max(n, 1):.4f}", file=sys.stderr)
    return out

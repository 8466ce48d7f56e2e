"""The optimizer and the learning-rate schedule of a training run (``optim.optimizer``, ``optim.lr_schedule``,
``optim.warmup``).

The lr is a function of the run's progress ``t`` in epochs (``epoch + step / steps_per_epoch``), set before
every step. It depends on nothing but the config and ``t``, so a resumed run continues on the same curve without
any scheduler state; the paper's step schedule gives the lr of ``torch.optim.lr_scheduler.StepLR`` stepped once
per epoch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cianet.config import Config


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0, weight_decay=o.weight_decay
    )


def lr_at(cfg: Config, t: float) -> float:
    """The learning rate at progress ``t`` (epochs since the start, fractional) of a run configured by ``cfg``."""
    o = cfg.optim
    total = float(o.epochs)
    warm = o.warmup * total
    if t < warm:  # linear rise from 0: the first step already moves (lr > 0)
        return o.lr * max(t, 1e-3 * warm) / warm
    if o.lr_schedule == "cosine":
        rest = max(total - warm, 1e-12)
        return o.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (t - warm) / rest)))
    return o.lr * o.lr_gamma ** (int(t) // max(1, o.lr_step))


class LrSchedule:
    """Sets the optimizer's lr before each step from :func:`lr_at`. ``state_dict``/``load_state_dict`` keep the
    checkpoint format (they carry nothing: the curve is a function of the config)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: Config):
        self.optimizer, self.cfg = optimizer, cfg

    def set(self, epoch: int, step: int, steps: int) -> float:
        """Set (and return) the lr of step ``step`` of ``steps`` in epoch ``epoch``."""
        lr = lr_at(self.cfg, epoch + step / max(steps, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Accepts any saved state, including StepLR's of runs trained before the lr became a function of t."""


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config) -> LrSchedule:
    return LrSchedule(optimizer, cfg)

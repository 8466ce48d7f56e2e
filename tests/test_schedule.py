"""The optimizer and lr schedule of a run (cianet.training.schedule) against obvious references."""

from __future__ import annotations

import math

import pytest
import torch

from cianet.config import Config, check_value
from cianet.errors import UsageError
from cianet.training.schedule import LrSchedule, build_optimizer, lr_at


def _cfg(**optim) -> Config:
    cfg = Config()
    for key, value in optim.items():
        setattr(cfg.optim, key, value)
    return cfg


def test_step_schedule_is_steplr_stepped_once_per_epoch():
    cfg = _cfg(epochs=12, lr=0.03, lr_step=4, lr_gamma=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    ref = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.1)
    for epoch in range(cfg.optim.epochs):
        for frac in (0.0, 0.5, 0.99):  # constant within the epoch
            assert lr_at(cfg, epoch + frac) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        ref.step()


def test_cosine_runs_from_lr_to_zero_through_half():
    cfg = _cfg(epochs=10, lr=0.2, lr_schedule="cosine")
    assert lr_at(cfg, 0.0) == pytest.approx(0.2)
    assert lr_at(cfg, 5.0) == pytest.approx(0.1)
    assert lr_at(cfg, 10.0) == pytest.approx(0.0, abs=1e-15)
    ts = [i / 7 for i in range(71)]
    values = [lr_at(cfg, t) for t in ts]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    for t in ts:  # the textbook formula, in float64
        assert lr_at(cfg, t) == pytest.approx(0.1 * (1 + math.cos(math.pi * t / 10)), abs=1e-12)


def test_warmup_rises_linearly_then_follows_the_schedule():
    cfg = _cfg(epochs=10, lr=1.0, lr_schedule="cosine", warmup=0.2)  # 2 epochs of warm-up
    assert 0 < lr_at(cfg, 0.0) < 0.01  # the first step moves, a little
    assert lr_at(cfg, 1.0) == pytest.approx(0.5)
    assert lr_at(cfg, 2.0) == pytest.approx(1.0)
    assert lr_at(cfg, 6.0) == pytest.approx(0.5)  # half-way through the 8 cosine epochs
    step = _cfg(epochs=10, lr=1.0, warmup=0.2, lr_step=5, lr_gamma=0.5)
    assert lr_at(step, 1.0) == pytest.approx(0.5) and lr_at(step, 3.0) == 1.0 and lr_at(step, 7.0) == 0.5


def test_schedule_sets_every_param_group_per_step_and_resumes_without_state():
    cfg = _cfg(epochs=4, lr=0.1, lr_schedule="cosine")
    model = torch.nn.Linear(2, 1)
    opt = build_optimizer(model, cfg)
    sched = LrSchedule(opt, cfg)
    lr = sched.set(epoch=2, step=5, steps=10)  # t = 2.5
    assert lr == pytest.approx(lr_at(cfg, 2.5)) and all(g["lr"] == lr for g in opt.param_groups)
    fresh = LrSchedule(build_optimizer(model, cfg), cfg)
    fresh.load_state_dict({"step_size": 4, "gamma": 0.1, "last_epoch": 2})  # a StepLR state of an older run
    assert fresh.set(2, 5, 10) == lr


def test_optimizer_choice():
    model = torch.nn.Linear(2, 1)
    assert isinstance(build_optimizer(model, _cfg()), torch.optim.SGD)
    adamw = build_optimizer(model, _cfg(optimizer="adamw", lr=1e-3, weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05


@pytest.mark.parametrize(("key", "value"), [("optimizer", "adam"), ("lr_schedule", "onecycle"), ("warmup", 1.0)])
def test_bad_optim_values_are_refused(key, value):
    with pytest.raises(UsageError, match=f"optim.{key}"):
        check_value("optim", key, value)

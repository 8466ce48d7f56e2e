"""Training and evaluation: grid targets, resume determinism, non-finite stop, alignment-aware evaluation, configs."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cianet.cli import main
from cianet.config import load_config
from helpers import NARROW, tiny_config


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_weights(tiny_nih, tmp_path, monkeypatch):
    from cianet.training import loop as tr

    root = tiny_nih(12)  # 12 training images at 32 px in batches of 4: still 3 steps an epoch, at a third of the cost

    def config(name: str):
        return tiny_config(tmp_path / name, root, data__image_size=32, optim__batch_size=4)

    straight = tr.fit(config("straight"))  # the same recipe on the same data, trained without interruption

    real_epoch = tr.train_one_epoch
    calls = {"n": 0}

    def dying_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed during the second epoch, after the first checkpoint
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(tr, "train_one_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        tr.fit(config("killed"))
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["epoch"] == 0
    assert not (tmp_path / "killed" / "metrics.json").exists()
    monkeypatch.setattr(tr, "train_one_epoch", real_epoch)
    with pytest.raises(ValueError, match="--resume"):
        tr.fit(config("killed"))
    resumed = tr.fit(config("killed"), resume=True)

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    m = json.loads((resumed / "metrics.json").read_text())
    assert set(m) >= {"localization", "auc"} and "0.5" in m["localization"] and "Mean" in m["auc"]


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_checkpoint(tiny_root, tmp_path, monkeypatch):
    import cianet.losses as losses
    from cianet.training import loop as tr

    cfg = tiny_config(tmp_path / "nan", tiny_root, optim__epochs=1)
    real = losses.cianet_loss

    def nan_loss(*a, **k):
        out = real(*a, **k)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(losses, "cianet_loss", nan_loss)
    with pytest.raises(tr.NonFiniteLossError, match="non-finite loss"):
        tr.fit(cfg)
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_identity_alignment_gives_the_same_localization_as_none(tiny_root, tmp_path):
    """The aligned path (regions rasterized in the image frame) agrees with the exact unaligned path."""
    from cianet.models.alignment import AlignmentNet
    from cianet.run.loaders import make_loaders
    from cianet.run.networks import build_network
    from cianet.run.protocol import build_run_data
    from cianet.run.scoring import evaluate

    # the 2 x 2 grid of a plain trunk at 64 px: large cells, so random regions overlap the boxes
    cfg = tiny_config(
        tmp_path / "eval",
        tiny_root,
        model__kind="baseline",
        model__output_stride=32,
        model__last_stage="c5",
        model__width=64,  # the seeded draw this test's non-trivial regions were checked with
    )
    torch.manual_seed(0)
    model = build_network(cfg)
    with torch.no_grad():  # zero bias, larger weights: cell probabilities spread around 0.5, regions vary
        model.head.cls.bias.zero_()
        model.head.cls.weight.normal_(0, 1.0)
    data = build_run_data(cfg)
    _, _, test_ds, loader = make_loaders(cfg, data)
    plain = evaluate(model, loader, torch.device("cpu"), progress=False, keep_predictions=True)
    ident = AlignmentNet(input_size=64).eval()  # identity at initialization
    aligned = evaluate(model, loader, torch.device("cpu"), align_net=ident, progress=False, keep_predictions=True)
    assert plain["n_boxes"] > 0
    assert (plain["ious"] > 0).any() and (plain["ious"] < 1).any()  # non-trivial regions
    np.testing.assert_allclose(aligned["ious"], plain["ious"], atol=1e-6)
    np.testing.assert_allclose(aligned["scores"], plain["scores"], atol=1e-5)


def test_config_overrides_and_errors(tmp_path):
    from cianet.config import apply_overrides, save_config

    cfg = load_config("paper", ["optim.lr=0.05", "model.test_upsample=null"])
    assert cfg.optim.lr == 0.05 and cfg.model.test_upsample is None
    assert (cfg.model.backbone, cfg.data.image_size, cfg.optim.batch_size, cfg.optim.epochs) == ("resnet50", 512, 6, 15)
    with pytest.raises(ValueError, match="optim.lrr"):
        apply_overrides(cfg, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="unknown config"):
        load_config("nonexistent-recipe")
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


def _free_port() -> int:
    with socket.socket() as s:  # the system's pick: a fixed port collides with another run of the suite
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_as_rank(rank: int, world: int, port: int, argv: list[str], logs: Path) -> None:
    """One rank as torchrun starts it: the environment torchrun sets, then `python -m cianet ARGV`."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    out = open(logs / f"rank{rank}.out", "w", buffering=1)  # noqa: SIM115 - the process ends with the rank
    err = open(logs / f"rank{rank}.err", "w", buffering=1)  # noqa: SIM115
    os.dup2(out.fileno(), 1)  # C++ output (gloo) too, not into pytest's capture of the parent
    os.dup2(err.fileno(), 2)
    sys.stdout, sys.stderr = out, err
    sys.exit(main(argv))


#: what both ranks import on first use (the training, DDP, and torch._dynamo that DDP and torch.optim's step pull
#: in): the fork server imports it before it forks them
RANK_IMPORTS = ["torch", "torch._dynamo", "torch.nn.parallel", "cianet.commands.train", "cianet.training.loop"]


def _run_ranks(world: int, argv: list[str], logs: Path, timeout: float = 120.0) -> list[int | None]:
    """Each rank's exit code (None: killed by a signal, here when it hung); no rank outlives this call."""
    # Forks of a fresh server process that has imported what the ranks need (once, not once per rank), not of
    # this one: after an ONNX export (aot autograd) and a training here, autograd refuses to run in a fork.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(RANK_IMPORTS)
    port = _free_port()
    ranks = [ctx.Process(target=_train_as_rank, args=(r, world, port, argv, logs)) for r in range(world)]
    for p in ranks:
        p.start()
    deadline = time.monotonic() + timeout
    try:
        for p in ranks:
            p.join(max(0.0, deadline - time.monotonic()))
    finally:
        for p in ranks:
            if p.is_alive():  # a rank whose peer died waits in gloo for half an hour
                p.kill()
                p.join()
    return [p.exitcode if p.exitcode is not None and p.exitcode >= 0 else None for p in ranks]


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tiny_nih, tmp_path):
    """DistributedDataParallel with gloo: two ranks train, rank 0 alone writes the run (log, TensorBoard).

    torchrun only starts the processes and sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (what
    cianet.run.device and gloo's env:// read); the ranks here are forks of one fresh fork server that set the
    same variables and run `cianet train` as `python -m cianet` does, without importing torch three times."""
    tiny_root = tiny_nih(12)  # the smallest set the session has: each rank still gets batches every epoch
    out = tmp_path / "ddp"
    argv = [
        "train",
        "--config",
        "tiny",
        *NARROW,
        "--data-root",
        str(tiny_root),
        "--image-size",
        "32",  # what is checked is who writes what: the smallest input the tiny recipe takes
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--out",
        str(out),
        "--no-progress",
        "--align",
        "none",
        "--set",
        "model.test_upsample=16",
        "--set",
        "model.head_channels=16",
        "--set",
        "run.threads=1",
        "--set",
        "run.tensorboard=true",
    ]
    codes = _run_ranks(2, argv, tmp_path)
    errors = "".join((tmp_path / f"rank{r}.err").read_text()[-3000:] for r in range(2))
    assert codes == [0, 0], errors
    stdout = "".join((tmp_path / f"rank{r}.out").read_text() for r in range(2))
    assert stdout.count("run: ") == 1  # only rank 0 reports
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["event"] == "epoch"] == [0]  # one writer: two would log [0, 0]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 0
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert set(json.loads((out / "metrics.json").read_text())) >= {"localization", "auc"}
    assert json.loads((out / ".cianet-output.json").read_text())["kind"] == "train"  # rank 0 claimed the folder
    assert not (out / ".cianet.lock").exists()  # ... and released its lock


def test_checkpoints_name_no_local_path_and_read_them_from_the_run_config(trained_run, tmp_path, capsys):
    """checkpoint.pt keeps file names only; its reader restores the paths from config.yaml beside it, so a moved
    run folder (its config.yaml moved with it) evaluates; a checkpoint copied alone names the file it lacks."""
    import shutil

    from cianet.run.checkpoints import load_checkpoint
    from helpers import local_paths, one_line

    run = shutil.copytree(trained_run, tmp_path / "moved")
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    assert not local_paths(raw, trained_run.parent) and raw["config"]["data"]["data_root"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert load_checkpoint(run)["config"]["data"]["data_root"] == saved["data"]["data_root"]
    assert main(["evaluate", "--run", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run / "checkpoint.pt", alone)
    root_name = load_checkpoint(alone)["config"]["data"]["data_root"]
    assert root_name == Path(saved["data"]["data_root"]).name
    assert main(["evaluate", "--run", str(alone), "--no-progress"]) == 2
    assert root_name in one_line(capsys.readouterr().err)

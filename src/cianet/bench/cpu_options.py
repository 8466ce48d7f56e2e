"""CPU speed options that `cianet bench` does not measure by default, each timed side by side in one process.

    python -m cianet.bench.cpu_options threads   # matmul and a training step with 1 vs 2 (all) threads
    python -m cianet.bench.cpu_options bf16      # a training step in float32 vs bfloat16 autocast
    python -m cianet.bench.cpu_options compile   # eager vs torch.compile (compiling takes minutes on 2 cores)
    python -m cianet.bench.cpu_options chunks    # HashIndex.query chunk sizes, 60k codes

Each prints one JSON object. Training steps are those of `cianet bench` (``train_one_epoch`` on a synthetic
batch, ResNet-18 baseline at 256 px, batch 16, channels-last, best of ``--steps``); see docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from cianet.bench.speed import env_info, matmul_gflops, synthetic_batch, train_config
from cianet.negatives import HashIndex
from cianet.run.networks import build_network
from cianet.training.loop import train_one_epoch
from cianet.training.schedule import build_optimizer


class _Autocast(nn.Module):
    """Runs the wrapped model's forward under CPU bfloat16 autocast (train_one_epoch enables AMP on CUDA only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args, **kw):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(*args, **kw)


def time_steps(
    wrap: Callable[[nn.Module], nn.Module],
    kind: str,
    backbone: str,
    size: int,
    batch: int,
    steps: int,
    channels_last: bool = True,
) -> dict[str, float]:
    """Best step time of ``train_one_epoch`` on one synthetic batch for ``wrap(model)``; first step separately."""
    torch.manual_seed(0)
    cfg = train_config(kind, backbone, size, batch, channels_last, 512)
    model = build_network(cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    net = wrap(model)
    data = [synthetic_batch(batch, size)]
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        train_one_epoch(net, optimizer, data, torch.device("cpu"), 0, cfg=cfg, progress=False)
        times.append(time.perf_counter() - t0)
    return {"first_step_s": times[0], "step_s": min(times[1:]), "images_per_s": batch / min(times[1:])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("option", choices=["threads", "bf16", "compile", "chunks"])
    p.add_argument("--kind", default="baseline")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    out: dict = {
        "option": args.option,
        "env": env_info(),
        "kind": args.kind,
        "backbone": args.backbone,
        "size": args.size,
        "batch": args.batch,
    }
    same = (args.kind, args.backbone, args.size, args.batch, args.steps)
    if args.option == "threads":
        for n in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(n)
            out[f"threads_{n}"] = {"matmul_gflops": matmul_gflops(), **time_steps(lambda m: m, *same)}
    elif args.option == "bf16":
        out["float32"] = time_steps(lambda m: m, *same)
        out["bf16_autocast"] = time_steps(_Autocast, *same)
    elif args.option == "compile":
        out["eager"] = time_steps(lambda m: m, *same)
        out["compiled"] = time_steps(torch.compile, *same)
    else:
        rng = np.random.default_rng(0)
        m, q = 60_000, 16_384
        index = HashIndex(
            rng.random((m, 256), dtype=np.float32), [f"n{i}" for i in range(m)], [f"p{i // 2}" for i in range(m)]
        )
        codes = rng.random((q, 256), dtype=np.float32)
        names = [f"n{i}" for i in range(q)]
        pats = [f"p{i // 2}" for i in range(q)]
        ref = None
        for chunk in (256, 1024, 4096):
            t0 = time.perf_counter()
            rows = index.query(codes, names, pats, chunk=chunk)
            dt = time.perf_counter() - t0
            ref = rows if ref is None else ref
            out[f"chunk_{chunk}"] = {"queries_per_s": q / dt, "same_rows": bool(np.array_equal(rows, ref))}
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

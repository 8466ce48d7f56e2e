"""``cianet bench``: speed of training, data loading, negative pairing and inference, measured in one process.

Every figure is a measurement taken in the same run, so ratios between them (achieved FLOP rate / matmul rate,
bank / recompute, vectorized / naive pairing) are comparable even on a machine whose speed drifts:

1. ``matmul_gflops``: dense float32 ``torch.mm`` (2048 x 2048 by default), best of several, with the thread
   count used for everything else: the reference ceiling of the machine.
2. ``train``: one full training step (``cianet.training.loop.train_one_epoch`` on one synthetic batch: forward,
   loss of eq. 6, backward, SGD) of the baseline and of CIA-Net; images/s from the best of ``steps`` timed steps,
   FLOPs of one step counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
   products, forward and backward; elementwise ops are not counted), ``flop_fraction = achieved / matmul``.
3. ``data``: the tiny recipe's real training loaders (``cianet.run.loaders.make_loaders`` on a synthetic
   phantom, negatives paired by perceptual hash) from the uint8 cache and from decoding PNGs;
   ``wait_fraction``: the share of the tiny recipe's training loop spent blocked in ``next(loader)``.
4. ``pairing``: ``HashIndex.query`` against a bank of random unit codes vs ``query_naive``.
5. ``predict``: ``Predictor`` with the negative bank (stored ``M-``) vs recomputing ``M-`` from the negative
   image, each in a fresh subprocess so that its peak resident memory is its own; then, in a third process
   (:mod:`cianet.bench.predict_profile`), the networks' FLOPs per image and ``flop_fraction`` (their achieved
   rate over the matmul rate of part 1), bfloat16 against float32 (``bf16_speedup``), the same for the
   networks as evaluation runs them (top-level ``evaluate``) and the seconds per image of each stage of
   ``cianet predict`` over a folder of real-size PNGs. ``bf16_supported`` (top level) says whether the
   device computes bfloat16 natively (:mod:`cianet.run.precision`).

Nothing here changes how the library trains or predicts; variants (the other memory layout, the literal
"upsample then convolve" test-time head instead of the library's factorized one) are measured side by side so
that their effect is a figure, not a guess.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cianet.bench.predict_profile import count_flops, profile_worker, write_folder
from cianet.config import Config, load_config
from cianet.data.cache import build_cache
from cianet.data.io import load_xray, resize_gray
from cianet.data.nih import NIHIndex
from cianet.errors import UsageError
from cianet.inference.bundle import negative_bank
from cianet.inference.predictor import Predictor
from cianet.labels import NUM_CLASSES
from cianet.models.alignment import AlignmentNet
from cianet.negatives import HashIndex, query_naive
from cianet.phantom import generate_dataset
from cianet.run.bundle_file import make_bundle, save_bundle
from cianet.run.loaders import make_loaders
from cianet.run.networks import build_network
from cianet.run.precision import cpu_bf16_native
from cianet.run.protocol import build_run_data
from cianet.training.loop import train_one_epoch
from cianet.training.schedule import build_optimizer

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------------ settings
@dataclass
class BenchSettings:
    """What `cianet bench` measures and at which sizes (defaults: the full run, ~3-5 minutes on 2 cores)."""

    parts: tuple[str, ...] = ("matmul", "train", "data", "pairing", "predict")
    threads: int | None = None  # torch intra-op threads for every part (None: torch's default)
    device: str = "cpu"  # device of the matmul and training parts ("cuda": AMP per the paper recipe)
    matmul_n: int = 2048
    matmul_repeats: int = 5
    # training step
    backbone: str = "resnet18"
    size: int = 256
    batch: int = 16
    steps: int = 3  # timed steps per model, after one FLOP-counting and one warm-up step
    channels_last: bool = True  # the layout of the main "train" figures (the paper recipe's default)
    compare_layouts: bool = True  # also time the other layout (NCHW vs channels-last)
    head_channels: int = 512
    # data pipeline (the tiny recipe on a phantom)
    phantom_images: int = 200
    phantom_size: int = 256
    setup_workers: int | None = None  # processes drawing the phantom and caching it (None: all CPUs)
    data_size: int | None = None  # image size of the data part (None: the tiny recipe's data.image_size)
    workers: int | None = None  # DataLoader workers (None: the tiny recipe's data.workers)
    wait_steps: int | None = 6  # training steps of the wait measurement (None: one epoch)
    # negative pairing
    bank_codes: int = 60_000
    queries: int = 112_120  # one NIH-size epoch
    naive_queries: int = 20
    # inference
    predict_backbone: str = "resnet50"
    predict_size: int = 512
    predict_images: int = 8  # timed images per mode (after one warm-up batch)
    predict_batch: int = 4
    predict_bank: int = 16  # negatives in the bundle's bank
    predict_upsample: int | None = 128  # test-time grid (paper: 128)
    compare_heads: bool = True  # also time the direct (unfactorized) test-time head
    predict_folder_images: int = 64  # real-size PNGs that `predict` runs over for the stage breakdown
    predict_folder_size: int = 1024  # their side (NIH: 1024)
    compare_prefetch: bool = True  # also run the folder with decoding in turn (no prefetch)
    seed: int = 0

    @classmethod
    def quick(cls) -> BenchSettings:
        """A tiny run (seconds) exercising every part, for the test suite."""
        return cls(
            matmul_n=256,
            matmul_repeats=2,
            backbone="resnet18",
            size=64,
            batch=2,
            steps=1,
            compare_layouts=False,
            head_channels=32,
            phantom_images=80,
            phantom_size=64,
            setup_workers=1,  # 80 small images: starting worker processes would cost more than drawing them
            data_size=64,
            wait_steps=2,
            bank_codes=2000,
            queries=500,
            naive_queries=3,
            predict_backbone="resnet18",
            predict_size=64,
            predict_images=2,
            predict_batch=2,
            predict_bank=4,
            predict_upsample=8,
            compare_heads=False,
            predict_folder_images=4,
            predict_folder_size=128,
        )


def env_info() -> dict[str, Any]:
    """Torch version, thread counts, CPU model and load, for the record next to every figure."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "loadavg_1min": None if load is None else round(load[0], 2),
    }


def _best(times: list[float]) -> float:
    return min(times) if times else float("nan")


# ------------------------------------------------------------------------------------------------- matmul
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(n: int = 2048, repeats: int = 5, warmup: int = 2, device: str | torch.device = "cpu") -> float:
    """Dense float32 ``torch.mm`` rate of ``(n, n) @ (n, n)`` in GFLOP/s (``2 n^3`` FLOPs), best of ``repeats``."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    out = torch.empty(n, n, device=device)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / _best(times) / 1e9


# --------------------------------------------------------------------------------------------- training
def synthetic_batch(batch: int, size: int, seed: int = 0) -> dict[str, Tensor]:
    """A batch in the training loader's format (``cianet.run.datasets.collate``), random but plausible.

    ``image``/``neg`` (B, 1, S, S) in [0, 1]; ``labels``/``box_mask`` (B, 14); ``boxes`` (B, 1, 5): every other
    image carries one box of class 0 (so both the box and the MIL term of eq. 6 are exercised).
    """
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(batch, NUM_CLASSES, generator=g) < 0.15).float()
    boxes = torch.full((batch, 1, 5), -1.0)
    box_mask = torch.zeros(batch, NUM_CLASSES)
    for b in range(0, batch, 2):
        boxes[b, 0] = torch.tensor([0.0, size * 0.25, size * 0.3, size * 0.2, size * 0.25])
        box_mask[b, 0] = labels[b, 0] = 1.0
    return {
        "image": torch.rand(batch, 1, size, size, generator=g),
        "neg": torch.rand(batch, 1, size, size, generator=g),
        "labels": labels,
        "box_mask": box_mask,
        "boxes": boxes,
        "orig_size": torch.full((batch, 2), float(size)),
        "index": torch.arange(batch),
    }


def train_config(kind: str, backbone: str, size: int, batch: int, channels_last: bool, head_channels: int):
    """The paper recipe (cianet.config defaults) at the benchmark's model, size and batch; CPU, random init."""
    cfg = Config()
    cfg.model.kind, cfg.model.backbone, cfg.model.pretrained = kind, backbone, False
    cfg.model.head_channels = head_channels
    cfg.data.image_size, cfg.optim.batch_size = size, batch
    cfg.optim.channels_last = channels_last
    cfg.run.device, cfg.run.progress = "cpu", False
    return cfg


def bench_train_step(
    kind: str,
    backbone: str = "resnet18",
    size: int = 256,
    batch: int = 16,
    steps: int = 3,
    channels_last: bool = True,
    head_channels: int = 512,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Time one full training step of ``kind`` ("baseline" | "cianet") through ``train_one_epoch``.

    On CUDA the step runs as ``cianet train`` runs it there: AMP (float16 with a GradScaler) per the recipe.

    Returns ``images_per_s`` (from the best step), ``step_s`` (best), ``step_s_median``, ``step_times_s`` (every
    timed step), ``gflops_per_step``
    (FlopCounterMode over one step), ``achieved_gflops`` = gflops_per_step / step_s.
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    cfg = train_config(kind, backbone, size, batch, channels_last, head_channels)
    cfg.run.device = str(device)
    model = build_network(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=bool(cfg.optim.amp and device.type == "cuda"))
    data = [synthetic_batch(batch, size, seed)]

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        train_one_epoch(model, optimizer, data, device, 0, cfg=cfg, scaler=scaler, progress=False)
        _sync(device)
        return time.perf_counter() - t0

    flops = count_flops(step)  # also the first (allocating) step
    step()  # warm-up outside the counter
    times = [step() for _ in range(max(1, steps))]
    best = _best(times)
    return {
        "images_per_s": batch / best,
        "step_s": best,
        "step_s_median": float(np.median(times)),
        "step_times_s": times,
        "gflops_per_step": flops / 1e9,
        "achieved_gflops": flops / best / 1e9,
        "channels_last": channels_last,
        "amp": bool(scaler.is_enabled()),
    }


# ------------------------------------------------------------------------------------------ data pipeline
class TimedLoader:
    """Wraps a loader: counts the seconds spent blocked in ``next()`` and stops after ``max_steps`` batches."""

    def __init__(self, loader: Iterable, max_steps: int | None = None) -> None:
        self.loader, self.max_steps = loader, max_steps
        self.wait_s = 0.0
        self.first_wait_s = 0.0
        self.batches = 0
        self.images = 0

    def __len__(self) -> int:
        n = len(self.loader)  # type: ignore[arg-type]
        return n if self.max_steps is None else min(n, self.max_steps)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        t0 = time.perf_counter()
        it = iter(self.loader)  # worker start-up is waiting too
        self.wait_s += time.perf_counter() - t0
        while self.max_steps is None or self.batches < self.max_steps:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                self.wait_s += time.perf_counter() - t0
                return
            dt = time.perf_counter() - t0
            self.wait_s += dt
            if self.batches == 0:
                self.first_wait_s = dt
            self.batches += 1
            self.images += int(batch["image"].shape[0])
            yield batch


def make_phantom(
    root: Path, n_images: int, size: int, cache_size: int, seed: int = 0, workers: int | None = None
) -> tuple[Path, Path]:
    """A phantom data set (cianet.phantom) under ``root/data`` and its uint8 cache at ``cache_size``, made by
    ``workers`` processes (None: all CPUs; the files do not depend on it)."""
    data, cache = root / "data", root / f"cache{cache_size}"
    generate_dataset(data, n_images=n_images, size=size, seed=seed, progress=False, workers=workers)
    index = NIHIndex.from_root(data)
    records = [(r.name, r.path) for r in index.records if r.path is not None]
    build_cache(records, cache_size, cache, workers=workers, progress=False)
    return data, cache


def _tiny_config(
    data_root: Path, cache: Path | None, out: Path, workers: int | None, seed: int, image_size: int | None = None
):
    cfg = load_config("tiny")
    if image_size is not None:
        cfg.data.image_size = image_size
    cfg.data.data_root = str(data_root)
    cfg.data.cache = str(cache) if cache is not None else None
    if workers is not None:
        cfg.data.workers = workers
    cfg.run.out, cfg.run.progress, cfg.run.seed = str(out), False, seed
    return cfg


def bench_data(
    data_root: Path,
    cache: Path,
    work: Path,
    workers: int | None = None,
    wait_steps: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
) -> dict[str, Any]:
    """Loader throughput (cache vs PNG) and the share of the tiny recipe's training loop spent waiting for data.

    Throughput: one epoch of the tiny recipe's training loader (positives with their hash-paired negatives,
    collated batches) with nothing else running; images/s counts the positives delivered. The wait share
    comes from ``train_one_epoch`` of the tiny recipe's model on the same loader (first ``wait_steps`` batches).
    """
    out: dict[str, Any] = {}
    loaders = {}
    for key, cache_dir in (("cache", cache), ("png", None)):
        cfg = _tiny_config(data_root, cache_dir, work / f"run-{key}", workers, seed, image_size)
        run_data = build_run_data(cfg)
        _, train_loader, _, _ = make_loaders(cfg, run_data)  # pairs negatives (hash codes) once, untimed
        loaders[key] = (cfg, train_loader)
        timed = TimedLoader(train_loader(0))
        t0 = time.perf_counter()
        for _ in timed:
            pass
        elapsed = time.perf_counter() - t0
        out[f"{key}_images_per_s"] = timed.images / elapsed
        out[f"{key}_batches"] = timed.batches
    cfg = loaders["cache"][0]
    out.update(
        {
            "workers": cfg.data.workers,
            "batch": cfg.optim.batch_size,
            "image_size": cfg.data.image_size,
            "backbone": cfg.model.backbone,
            "model": cfg.model.kind,
            "train_images": len(run_data.train),
        }
    )
    for key in ("cache", "png"):
        cfg, train_loader = loaders[key]
        torch.manual_seed(seed)
        model = build_network(cfg)
        if cfg.optim.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, cfg)
        timed = TimedLoader(train_loader(0), wait_steps)
        t0 = time.perf_counter()
        train_one_epoch(model, optimizer, timed, torch.device("cpu"), 0, cfg=cfg, progress=False)
        total = time.perf_counter() - t0
        suffix = "" if key == "cache" else "_png"
        out[f"wait_fraction{suffix}"] = timed.wait_s / total
        out[f"wait_s{suffix}"] = timed.wait_s
        out[f"loop_s{suffix}"] = total
        out[f"wait_steps{suffix}"] = timed.batches
    return out


# ------------------------------------------------------------------------------------------------ pairing
def bench_pairing(
    bank_codes: int = 60_000, queries: int = 112_120, naive_queries: int = 20, seed: int = 0
) -> dict[str, Any]:
    """Queries/s of ``HashIndex.query`` (self and same-patient exclusion on) vs ``query_naive``.

    Codes are random non-negative vectors (hash codes of images are non-negative); every bank image is also a
    query (it excludes itself), the remaining queries are new images; ~2 images per patient.
    """
    rng = np.random.default_rng(seed)
    dim = 256
    names = [f"n{i}" for i in range(bank_codes)]
    patients = [f"p{i // 2}" for i in range(bank_codes)]
    index = HashIndex(rng.random((bank_codes, dim), dtype=np.float32), names, patients)
    q_codes = rng.random((queries, dim), dtype=np.float32)
    q_names = [names[i] if i < bank_codes else f"q{i}" for i in range(queries)]
    q_patients = [patients[i] if i < bank_codes else f"r{i // 2}" for i in range(queries)]
    t0 = time.perf_counter()
    rows = index.query(q_codes, exclude_names=q_names, exclude_patients=q_patients)
    fast_s = time.perf_counter() - t0
    n = min(naive_queries, queries)
    t0 = time.perf_counter()
    ref = query_naive(index, q_codes[:n], q_names[:n], q_patients[:n])
    naive_s = time.perf_counter() - t0
    return {
        "queries_per_s": queries / fast_s,
        "naive_queries_per_s": n / naive_s,
        "epoch_s": fast_s,
        "queries": queries,
        "bank_codes": bank_codes,
        "naive_queries": n,
        "naive_agrees": bool(np.array_equal(rows[:n], ref)),
    }


# ------------------------------------------------------------------------------------------------ predict
def use_direct_head(model: nn.Module) -> nn.Module:
    """Make the model compute its upsampled test-time head literally (upsample, then convolve): the baseline
    that the library's factorized head (:func:`cianet.models.upsample_head.upsampled_head`) is compared with."""
    model.factorized_test_head = False
    return model


def make_predict_bundle(
    path: Path,
    data_root: Path,
    backbone: str,
    size: int,
    upsample: int | None,
    bank: int,
    head_channels: int = 512,
    seed: int = 0,
) -> list[str]:
    """Write a CIA-Net bundle (random init, paper recipe at ``backbone``/``size``, with a ResNet-18 alignment
    network at 224 px or ``size`` if smaller) with ``bank`` phantom No Finding negatives (images stored, so
    ``recompute`` can run); return the query image paths (not in the bank)."""
    torch.manual_seed(seed)
    cfg = Config()
    cfg.model.kind, cfg.model.backbone, cfg.model.pretrained = "cianet", backbone, False
    cfg.model.test_upsample, cfg.model.head_channels = upsample, head_channels
    cfg.data.image_size = size
    model = build_network(cfg).eval()
    index = NIHIndex.from_root(data_root)
    records = [r for r in index.records if r.path is not None]
    negatives = [r for r in records if r.no_finding][:bank]
    if not negatives:
        raise ValueError(f"{data_root}: the phantom has no No Finding image for the negative bank")
    images = np.stack([resize_gray(load_xray(r.path), size) for r in negatives])
    align_kwargs = {"backbone": "resnet18", "input_size": min(224, size)}
    align_net = AlignmentNet(pretrained=False, **align_kwargs).eval()  # its zero last layer: the identity warp
    neg_bank = negative_bank(model, images, [r.name for r in negatives], align_net, include_images=True)
    save_bundle(make_bundle(model, cfg, bank=neg_bank, align_net=align_net, align_kwargs=align_kwargs), path)
    used = {r.name for r in negatives}
    return [str(r.path) for r in records if r.name not in used]


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of the current address space. (``ru_maxrss``
    is not used there: it survives ``exec``, so a freshly spawned worker would report at least its parent's
    resident size at fork time.) Elsewhere: ``getrusage(RUSAGE_SELF).ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    # lazy: a Unix-only module
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def predict_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: Predictor in one mode over image files; images/s and this process's peak RSS."""
    if spec["mode"] == "profile":
        return {**profile_worker(spec), "peak_rss_mb": peak_rss_mb()}
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    # float32, so that the figures compare with those taken before bfloat16 existed (profile_worker has both)
    pred = Predictor.from_bundle(
        spec["bundle"], device=spec.get("device", "cpu"), mode=spec["mode"], batch_size=spec["batch"], precision="fp32"
    )
    if spec.get("direct_head"):
        use_direct_head(pred.model)
    paths, b = spec["paths"], int(spec["batch"])
    pred.predict_batch(paths[:b])  # warm-up (allocations, oneDNN primitives)
    timed = paths[b : b + int(spec["images"])]
    t0 = time.perf_counter()
    pred.predict_batch(timed)
    elapsed = time.perf_counter() - t0
    return {"images_per_s": len(timed) / elapsed, "images": len(timed), "peak_rss_mb": peak_rss_mb()}


def run_worker(spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """One predict-bench worker (``spec["mode"]``) in a fresh interpreter, so that its peak memory is its own;
    its JSON result. Tests replace it with an in-process stand-in (``tests/helpers.py``)."""
    cmd = [sys.executable, "-m", "cianet.bench.speed", "--predict-worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"predict benchmark worker ({spec['mode']}) failed: " + " | ".join(tail))
    return json.loads(lines[-1])


def bench_predict(
    data_root: Path,
    work: Path,
    backbone: str = "resnet50",
    size: int = 512,
    upsample: int | None = 128,
    images: int = 8,
    batch: int = 4,
    bank: int = 16,
    threads: int | None = None,
    compare_heads: bool = True,
    seed: int = 0,
    log: Log | None = None,
    folder_images: int = 64,
    folder_size: int = 1024,
    compare_prefetch: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Predict images/s and peak RSS with the bank vs recomputing ``M-`` (each mode in a fresh process), then
    the profile of :mod:`cianet.bench.predict_profile` (FLOPs, networks-only float32 and bfloat16 speed,
    the stage breakdown of ``predict_files`` over ``folder_images`` PNGs of ``folder_size`` px).

    Main figures use the library's test-time head (factorized); with ``compare_heads`` (and an upsampling grid)
    both modes are timed again with the literal upsample-then-convolve head (``*_direct`` keys).
    """
    bundle = work / "bench-bundle.pt"
    paths = make_predict_bundle(bundle, data_root, backbone, size, upsample, bank, seed=seed)
    need = batch + images
    if len(paths) < need:
        paths = (paths * math.ceil(need / max(1, len(paths))))[:need]
    out: dict[str, Any] = {
        "backbone": backbone,
        "size": size,
        "test_upsample": upsample,
        "batch": batch,
        "bank_entries": bank,
    }
    variants = [False] + ([True] if compare_heads and upsample else [])
    for direct in variants:
        suffix = "_direct" if direct else ""
        for mode in ("bank", "recompute"):
            if log:
                log(f"predict: {mode}{' (direct head)' if direct else ''}")
            r = run_worker(
                {
                    "bundle": str(bundle),
                    "mode": mode,
                    "batch": batch,
                    "images": images,
                    "paths": paths[:need],
                    "threads": threads,
                    "direct_head": direct,
                    "device": device,
                }
            )
            out[f"{mode}_images_per_s{suffix}"] = r["images_per_s"]
            out[f"{mode}_peak_rss_mb{suffix}"] = r["peak_rss_mb"]
        out[f"bank_speedup{suffix}"] = out[f"bank_images_per_s{suffix}"] / out[f"recompute_images_per_s{suffix}"]
    out["images"] = images
    if log:
        log(f"predict: profile (FLOPs, float32 vs bfloat16, {folder_images} PNGs of {folder_size} px by stage)")
    folder = work / "predict-folder"
    write_folder(folder, paths, folder_images, folder_size, seed)
    profile = run_worker(
        {
            "bundle": str(bundle),
            "mode": "profile",
            "batch": batch,
            "images": images,
            "folder": str(folder),
            "out": str(work / "predict-out"),
            "threads": threads,
            "compare_prefetch": compare_prefetch,
            "device": device,
        }
    )
    profile["profile_peak_rss_mb"] = profile.pop("peak_rss_mb")
    out.update(profile)
    out["bf16_speedup"] = profile.get("bf16_speedup")  # None where the device has no native bfloat16
    return out


# -------------------------------------------------------------------------------------------------- run
def _bench_train_all(s: BenchSettings, say: Log) -> dict[str, Any]:
    """Both models in the main layout (and the other one with ``compare_layouts``)."""
    layouts = [s.channels_last] + ([not s.channels_last] if s.compare_layouts else [])
    train: dict[str, Any] = {}
    variants = []
    for cl in layouts:
        for kind in ("baseline", "cianet"):
            say(f"train: {kind} {s.backbone} {s.size}px batch {s.batch} {'channels_last' if cl else 'NCHW'}")
            r = bench_train_step(kind, s.backbone, s.size, s.batch, s.steps, cl, s.head_channels, s.seed, s.device)
            r["kind"] = kind
            variants.append(r)
            if cl == s.channels_last:
                train[kind] = r
    train["variants"] = variants
    train.update({"backbone": s.backbone, "size": s.size, "batch": s.batch})
    return train


def run_bench(settings: BenchSettings | None = None, log: Log | None = None) -> dict[str, Any]:
    """Measure every part in ``settings.parts``; returns the JSON-ready result (see the module docstring)."""
    s = settings or BenchSettings()
    unknown = set(s.parts) - {"matmul", "train", "data", "pairing", "predict"}
    if unknown:
        raise UsageError(f"unknown bench parts {sorted(unknown)}; choose from matmul, train, data, pairing, predict")
    say = log or (lambda msg: None)
    threads_before = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        return _run_parts(s, say)
    finally:
        torch.set_num_threads(threads_before)  # leave the caller's process as it was


def _run_parts(s: BenchSettings, say: Log) -> dict[str, Any]:
    result: dict[str, Any] = {"env": env_info(), "settings": dataclasses.asdict(s)}
    # whether the bench's device computes bfloat16 natively: where "auto" precision turns it on
    dev = torch.device(s.device)
    result["bf16_supported"] = bool(
        cpu_bf16_native() if dev.type == "cpu" else dev.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    part_s: dict[str, float] = {}
    t_start = time.perf_counter()

    def timed(part: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        value = fn()
        part_s[part] = round(time.perf_counter() - t0, 2)
        return value

    samples: list[float] = []

    def matmul() -> float:
        samples.append(matmul_gflops(s.matmul_n, s.matmul_repeats, device=s.device))
        return max(samples)

    if "matmul" in s.parts or "train" in s.parts or "predict" in s.parts:
        say(f"matmul: {s.matmul_n}x{s.matmul_n} float32")
        result["matmul_gflops"] = timed("matmul", matmul)
    if "train" in s.parts:
        train = timed("train", lambda: _bench_train_all(s, say))
        # The ceiling is measured again after the training steps and the best rate kept: on a shared machine a
        # single early measurement can land in a busy moment and inflate every fraction.
        result["matmul_gflops"] = matmul()
        result["train"] = train
    with tempfile.TemporaryDirectory(prefix="cianet-bench-") as tmp:
        work = Path(tmp)
        if "data" in s.parts or "predict" in s.parts:
            cache_size = s.data_size or load_config("tiny").data.image_size
            say(f"phantom: {s.phantom_images} images at {s.phantom_size}px, cache at {cache_size}px")
            data_root, cache = timed(
                "phantom",
                lambda: make_phantom(work, s.phantom_images, s.phantom_size, cache_size, s.seed, s.setup_workers),
            )
        if "data" in s.parts:
            say("data: tiny recipe loaders (cache, PNG) and the training loop's wait share")
            result["data"] = timed(
                "data", lambda: bench_data(data_root, cache, work, s.workers, s.wait_steps, s.seed, s.data_size)
            )
        if "pairing" in s.parts:
            say(f"pairing: {s.queries} queries against {s.bank_codes} codes")
            result["pairing"] = timed(
                "pairing", lambda: bench_pairing(s.bank_codes, s.queries, s.naive_queries, s.seed)
            )
        if "predict" in s.parts:
            result["predict"] = timed("predict", lambda: _bench_predict_part(s, data_root, work, say))
            result["matmul_gflops"] = matmul()  # the ceiling again, as after training; the best is kept
    if samples:
        result["matmul_gflops_samples"] = samples
    for r in result.get("train", {}).get("variants", []):
        r["flop_fraction"] = r["achieved_gflops"] / result["matmul_gflops"]
    if "predict" in result:  # the prediction (and evaluation) networks' share of the float32 matmul rate
        result["predict"]["flop_fraction"] = result["predict"]["achieved_gflops"] / result["matmul_gflops"]
        result["evaluate"] = result["predict"].pop("evaluate")
        result["evaluate"]["flop_fraction"] = result["evaluate"]["achieved_gflops"] / result["matmul_gflops"]
    result["part_seconds"] = part_s
    result["env"]["loadavg_1min_end"] = env_info()["loadavg_1min"]
    result["seconds"] = time.perf_counter() - t_start
    return result


def _bench_predict_part(s: BenchSettings, data_root: Path, work: Path, say: Log) -> dict[str, Any]:
    """:func:`bench_predict` with the settings' prediction fields."""
    return bench_predict(
        data_root,
        work,
        s.predict_backbone,
        s.predict_size,
        s.predict_upsample,
        s.predict_images,
        s.predict_batch,
        s.predict_bank,
        s.threads,
        s.compare_heads,
        s.seed,
        log=say,
        folder_images=s.predict_folder_images,
        folder_size=s.predict_folder_size,
        compare_prefetch=s.compare_prefetch,
        device=s.device,
    )


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report of :func:`run_bench`'s result."""
    env = result["env"]
    lines = [
        f"cianet bench: torch {env['torch']}, {env['threads']} threads, {env['cpu']} "
        f"({env['cpu_count']} CPUs, load {env['loadavg_1min']} -> {env.get('loadavg_1min_end')}), "
        f"native bfloat16: {'yes' if result.get('bf16_supported') else 'no'}"
    ]
    if "matmul_gflops" in result:
        n = result["settings"]["matmul_n"]
        lines.append(f"matmul float32 {n}x{n}")
        lines.append(_row("torch.mm", f"{result['matmul_gflops']:8.1f} GFLOP/s"))
    if "train" in result:
        lines += _train_lines(result["train"])
    if "data" in result:
        lines += _data_lines(result["data"])
    if "pairing" in result:
        lines += _pairing_lines(result["pairing"])
    if "predict" in result:
        lines += _predict_lines(result["predict"], result.get("evaluate"))
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in result.get("part_seconds", {}).items())
    lines.append(f"({result['seconds']:.0f} s: {parts})")
    return "\n".join(lines)


def _row(label: str, value: str) -> str:
    """One measurement of the report, its values in one column."""
    return f"  {label:<44}{value}"


def _train_lines(t: dict[str, Any]) -> list[str]:
    lines = [
        f"train step {t['backbone']} {t['size']}px batch {t['batch']} (forward+backward+SGD)",
        _row("model / layout", "images/s  GFLOP/step  GFLOP/s  of matmul"),
    ]
    for r in t["variants"]:
        layout = "channels_last" if r["channels_last"] else "NCHW"
        lines.append(
            _row(
                f"{r['kind']} / {layout}",
                f"{r['images_per_s']:8.2f}  {r['gflops_per_step']:10.1f}  "
                f"{r['achieved_gflops']:7.1f}  {r['flop_fraction']:9.2f}",
            )
        )
    return lines


def _data_lines(d: dict[str, Any]) -> list[str]:
    return [
        f"data: tiny recipe loader ({d['image_size']}px, batch {d['batch']}, {d['workers']} workers, negatives paired)",
        _row("from the uint8 cache", f"{d['cache_images_per_s']:8.1f} images/s"),
        _row("decoding PNGs", f"{d['png_images_per_s']:8.1f} images/s"),
        _row(f"waiting for data, cache ({d['wait_steps']} steps)", f"{100 * d['wait_fraction']:8.1f} % of the loop"),
        _row(
            f"waiting for data, PNG ({d['wait_steps_png']} steps)", f"{100 * d['wait_fraction_png']:8.1f} % of the loop"
        ),
    ]


def _pairing_lines(p: dict[str, Any]) -> list[str]:
    return [
        f"negative pairing: {p['queries']} queries against {p['bank_codes']} codes",
        _row("HashIndex.query", f"{p['queries_per_s']:8.0f} queries/s (all in {p['epoch_s']:.1f} s)"),
        _row(
            f"query_naive ({p['naive_queries']} queries)",
            f"{p['naive_queries_per_s']:8.1f} queries/s (same answers: {p['naive_agrees']})",
        ),
    ]


def _predict_lines(p: dict[str, Any], e: dict[str, Any] | None) -> list[str]:
    """Bank against recompute, then (when profiled) the networks alone and the whole command on a folder."""
    lines = [
        f"predict: CIA-Net {p['backbone']} {p['size']}px, test grid {p['test_upsample']}, "
        f"batch {p['batch']}, one process per mode"
    ]
    for suffix, label in (("", ""), ("_direct", ", direct head")):
        if f"bank_images_per_s{suffix}" not in p:
            continue
        for mode in ("bank", "recompute"):
            lines.append(
                _row(
                    f"{mode}{label}",
                    f"{p[f'{mode}_images_per_s{suffix}']:8.2f} images/s, "
                    f"peak RSS {p[f'{mode}_peak_rss_mb{suffix}']:.0f} MB",
                )
            )
        lines.append(_row(f"bank speed-up{label}", f"{p[f'bank_speedup{suffix}']:8.2f} x"))
    if "networks_images_per_s" in p:
        lines += _network_lines(p, e) + _folder_lines(p)
    return lines


def _network_lines(p: dict[str, Any], e: dict[str, Any] | None) -> list[str]:
    """The prediction networks alone by precision, and the evaluation networks."""
    lines = [
        _row(
            "networks alone, float32",
            f"{p['networks_images_per_s']:8.2f} images/s, "
            f"{p['gflops_per_image']:.1f} GFLOP/image, {p['flop_fraction']:.2f} of matmul",
        )
    ]
    for prec in ("bf16", "fp16"):
        if p.get(f"{prec}_networks_images_per_s") is not None:
            lines.append(
                _row(
                    f"networks alone, {prec}",
                    f"{p[f'{prec}_networks_images_per_s']:8.2f} images/s ({p[f'{prec}_speedup']:.2f}x float32)",
                )
            )
    if p.get("bf16_speedup") is None:
        lines.append(_row("networks alone, bf16", "     n/a (no native bfloat16 on this device)"))
    if e:
        bf = "" if e.get("bf16_speedup") is None else f", bf16 {e['bf16_speedup']:.2f}x"
        lines.append(
            _row(
                "evaluation networks (negative image too)",
                f"{e['images_per_s']:8.2f} images/s, "
                f"{e['gflops_per_image']:.1f} GFLOP/image, {e['flop_fraction']:.2f} of matmul{bf}",
            )
        )
    return lines


def _folder_lines(p: dict[str, Any]) -> list[str]:
    """``cianet predict`` on a folder of PNGs, against the networks alone, with its seconds per stage."""
    lines = []
    for suffix, label in (
        ("", "all outputs"),
        ("_no_overlay", "no overlays"),
        ("_no_overlay_no_prefetch", "no overlays, decoding in turn"),
        ("_bf16", "bf16, all outputs"),
        ("_bf16_no_overlay", "bf16, no overlays"),
    ):
        if f"folder_s{suffix}" not in p:
            continue
        lines.append(
            _row(
                f"predict {p['folder_images']} PNGs, {label}",
                f"{p[f'folder_images_per_s{suffix}']:8.2f} images/s, "
                f"{p[f'folder_vs_networks{suffix}']:.2f}x the networks alone",
            )
        )
        stages = p[f"stages{suffix}"]
        lines.append(_row("  seconds per image", ", ".join(f"{k} {v:.3f}" for k, v in stages.items())))
    return lines


def _main(argv: list[str]) -> int:
    """``python -m cianet.bench.speed --predict-worker SPEC``: the subprocess side of :func:`bench_predict`."""
    if len(argv) != 2 or argv[0] != "--predict-worker":
        print(
            "usage: python -m cianet.bench.speed --predict-worker JSON (internal; use `cianet bench`)", file=sys.stderr
        )
        return 2
    print(json.dumps(predict_worker(json.loads(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

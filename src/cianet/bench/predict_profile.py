"""Where prediction's time goes, for `cianet bench` (run in a fresh process by :mod:`cianet.bench.speed`).

- FLOPs of ``Predictor.forward`` per image (alignment, CIA-Net with the bank's ``M-``, test-time head),
  counted as the training bench counts them: ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
  matrix products; elementwise work is not counted, so the fraction of the matmul rate is conservative);
- networks-only images/s (``Predictor.forward`` on images already decoded and resized) in float32 and, where
  the device computes it natively, bfloat16 (and float16 on CUDA);
- the same for the networks as evaluation runs them (the negative image through the attention trunk);
- the library's ``predict_files`` over a folder of real-size PNGs, its wall time and the seconds per image
  of each stage (decode, resize, alignment, pairing, networks, boxes, writing): as ``cianet predict`` runs
  by default (decoding ahead, writing behind) in float32, without the overlay PNGs, without them decoding in
  turn instead of ahead, and in bfloat16 with and without overlays where the device has it natively. With
  work ahead and behind the stage sums exceed the wall time: that difference is the hidden work.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from cianet.data.io import load_xray, resize_gray
from cianet.inference.batch import predict_files
from cianet.inference.predictor import Predictor
from cianet.run.forward import forward_grids
from cianet.run.precision import SETTING_OF, cpu_bf16_native
from cianet.utils.timing import StageTimer

STAGES = ("decode", "resize", "alignment", "pairing", "networks", "boxes", "writing")


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` as ``FlopCounterMode`` counts them (2 per multiply-add of convolutions and
    matrix products, forward and, where ``fn`` runs one, backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def write_folder(folder: Path, sources: Sequence[str], n: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` 8-bit ``size x size`` PNGs made from the phantom images ``sources`` (cycled): resized, with mild
    noise so that they compress and decode like real X-ray PNGs rather than smooth drawings."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = resize_gray(load_xray(sources[i % len(sources)]), size) * 255.0
        img = np.clip(np.rint(img + rng.normal(0.0, 2.0, img.shape)), 0, 255).astype(np.uint8)
        path = folder / f"xray{i:04d}.png"
        Image.fromarray(img).save(path)
        out.append(path)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_networks(pred, resized: np.ndarray, names: Sequence[str], batch: int, repeats: int = 3) -> float:
    """Seconds of ``pred.forward`` over ``resized`` in batches of ``batch``, after one warm-up batch: the best of
    ``repeats`` passes, as the training steps and the matmul rate it is compared with are best-of figures."""
    pred.forward(resized[:batch], names[:batch])
    _sync(pred.device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(resized), batch):
            pred.forward(resized[i : i + batch], names[i : i + batch])
        _sync(pred.device)
        best = min(best, time.perf_counter() - t0)
    return best


def profile_evaluation(
    model: torch.nn.Module, resized: np.ndarray, n: int, batch: int, device: torch.device, others: Sequence[str]
) -> dict[str, Any]:
    """The networks as evaluation runs them (``cianet.run.forward.forward_grids``: the negative *image* through
    the attention trunk with the positive, test-time head): FLOPs per image, images/s in float32 and in the
    ``others`` precisions, over ``n`` images in batches of ``batch`` (the negatives: the same images reversed)."""
    x = torch.from_numpy(np.ascontiguousarray(resized[: max(n, batch)]))[:, None].to(device)
    batches = [{"image": x[i : i + batch], "neg": x.flip(0)[i : i + batch]} for i in range(0, n, batch)]

    def seconds(precision: str, repeats: int = 3) -> float:  # best of `repeats` passes, as time_networks
        forward_grids(model, batches[0], upsample=True, channels_last=True, precision=precision)  # warm-up
        _sync(device)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for b in batches:
                forward_grids(model, b, upsample=True, channels_last=True, precision=precision)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        return best

    # one image and the last as its negative (FLOPs depend on shapes only); a one-image folder has no second
    flops = count_flops(lambda: forward_grids(model, {"image": x[:1], "neg": x[-1:]}, upsample=True))
    t32 = seconds("fp32")
    out: dict[str, Any] = {
        "gflops_per_image": flops / 1e9,
        "images_per_s": n / t32,
        "achieved_gflops": flops * n / t32 / 1e9,
        "bf16_speedup": None,
    }
    for precision in others:
        out[f"{precision}_images_per_s"] = n / seconds(precision)
        out[f"{precision}_speedup"] = out[f"{precision}_images_per_s"] / out["images_per_s"]
    return out


def profile_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The measurements of the module docstring for the bundle ``spec["bundle"]`` and the PNGs in
    ``spec["folder"]``; ``spec["images"]`` of them time the networks alone."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec.get("device", "cpu"))
    batch = int(spec["batch"])
    files = sorted(Path(spec["folder"]).glob("*.png"))
    n = min(int(spec["images"]), len(files))
    pred = Predictor.from_bundle(spec["bundle"], device=device, mode="bank", batch_size=batch, precision="fp32")
    resized = np.stack([pred.prepare(load_xray(f)) for f in files[: max(n, batch)]])
    names = [f.name for f in files[: len(resized)]]
    flops = count_flops(functools.partial(pred.forward, resized[:1], names[:1]))
    out: dict[str, Any] = {"gflops_per_image": flops / 1e9, "networks_images": n}
    seconds = time_networks(pred, resized[:n], names[:n], batch)
    out["networks_images_per_s"] = n / seconds
    out["achieved_gflops"] = flops * n / seconds / 1e9
    bf16 = cpu_bf16_native() if device.type == "cpu" else device.type == "cuda" and torch.cuda.is_bf16_supported()
    others = (["bf16"] if bf16 else []) + (["fp16"] if device.type == "cuda" else [])
    for precision in others:
        fast = pred.with_precision(SETTING_OF[precision])  # the same networks: loading them again measures nothing
        if fast.precision != precision:
            raise RuntimeError(f"the predictor computes {fast.precision}, not the {precision} to be timed")
        out[f"{precision}_networks_images_per_s"] = n / time_networks(fast, resized[:n], names[:n], batch)
        out[f"{precision}_speedup"] = out[f"{precision}_networks_images_per_s"] / out["networks_images_per_s"]
        del fast
    out["evaluate"] = profile_evaluation(pred.model, resized, n, batch, device, others)
    del pred
    # (suffix, prefetch depth, overlay, precision): as users run it, in float32; without the overlay PNGs;
    # to see what decoding ahead hides, without the overlay and decoding in turn; and in bfloat16 where the
    # device has it natively (what `--precision auto` picks), against the bfloat16 networks
    variants = [("", None, True, "fp32"), ("_no_overlay", None, False, "fp32")]
    if spec.get("compare_prefetch", True):
        variants.append(("_no_overlay_no_prefetch", 0, False, "fp32"))
    if "bf16" in others:
        variants += [("_bf16", None, True, "bf16"), ("_bf16_no_overlay", None, False, "bf16")]
    for suffix, depth, overlay, precision in variants:
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        timer = StageTimer(sync)
        t0 = time.perf_counter()
        summary = predict_files(
            [str(spec["folder"])],
            spec["bundle"],
            Path(spec["out"]) / f"run{suffix}",
            batch_size=batch,
            device=str(device),
            precision=precision,
            prefetch=depth,
            timer=timer,
            overlay=overlay,
            progress=False,
            log=lambda msg: None,
        )
        wall = time.perf_counter() - t0
        if summary.predicted != len(files):
            raise RuntimeError(f"predict over the bench folder predicted {summary.predicted} of {len(files)}")
        out[f"folder_s{suffix}"] = wall
        out[f"folder_images_per_s{suffix}"] = len(files) / wall
        # the folder against the networks alone on as many images (the target: <= 1.2, decoding hidden)
        networks = out["networks_images_per_s" if precision == "fp32" else f"{precision}_networks_images_per_s"]
        out[f"folder_vs_networks{suffix}"] = wall / (len(files) / networks)
        out[f"stages{suffix}"] = {s: timer.seconds.get(s, 0.0) / len(files) for s in STAGES}
    out["folder_images"] = len(files)
    return out

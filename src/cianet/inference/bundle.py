"""Building a model bundle from a finished run: the network, its alignment and a negative bank.

The file format (keys, versions, validation) is :mod:`cianet.run.bundle_file`; this module computes what goes
into it. The negative bank stores, for N No Finding training images, their hash codes and their attention
maps ``M-``, so prediction needs neither the data set nor a second pass through the attention trunk.
Maps are computed from the 8-bit negative (``round(255 x) / 255``) so that recomputing them from the
stored ``images`` gives the same numbers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cianet.config import CANONICAL, SIM
from cianet.data.cache import ImageCache
from cianet.data.canonical import load_canonical
from cianet.data.io import resize_gray, to_uint8
from cianet.data.layouts import open_index
from cianet.errors import InputError, MissingPathError, UsageError
from cianet.inference.model_card import model_card
from cianet.models.backbones import gray_to_input
from cianet.negatives import hash_codes
from cianet.run.bundle_file import make_bundle
from cianet.run.checkpoints import load_alignment, load_checkpoint, model_from_checkpoint
from cianet.run.datasets import ImageSource
from cianet.run.device import resolve_device
from cianet.run.pairing import aligned_images, negative_pool
from cianet.run.precision import autocast, resolve_precision
from cianet.run.protocol import read_split_file
from cianet.utils.progress import chunk_progress, progress_bar


@torch.no_grad()
def compute_attention_maps(
    model: nn.Module,
    images: np.ndarray,
    align_net: nn.Module | None = None,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = False,
    precision: str = "fp32",
) -> torch.Tensor:
    """Attention maps M of gray images ``(N, S, S)`` in [0, 1] -> ``(N, h, w)`` float32 (CPU), the native grid.

    The images are aligned first when ``align_net`` is given (as the negatives were in training), in float32;
    the attention trunk runs in ``precision`` ("fp32", "bf16" or "fp16", :mod:`cianet.run.precision`).
    """
    model.eval()
    out = []
    for i in chunk_progress(len(images), batch_size, "negative maps", not progress):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32))[:, None].to(device)
        if align_net is not None:
            x = align_net(x)["aligned"]  # (B, 1, S, S)
        with autocast(precision, x.device):
            out.append(model.attention_map(gray_to_input(x)).float().cpu())  # (B, h, w)
    return torch.cat(out) if out else torch.zeros(0, 0, 0)


def negative_bank(
    model: nn.Module,
    images: np.ndarray,
    names: Sequence[str],
    align_net: nn.Module | None = None,
    include_images: bool = False,
    strategy: str = SIM,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = False,
    aligned_codes: bool = False,
    precision: str = "fp32",
) -> dict[str, Any]:
    """The bank of negatives ``images`` ``(N, S, S)`` (float [0, 1] or uint8) named ``names``.

    Codes come from the 8-bit image, aligned by ``align_net`` first with ``aligned_codes`` (as the run's "sim"
    pairing hashed them: ``negatives.aligned_codes``); maps from the (aligned) 8-bit image through the model's
    attention branch in eval mode. See the module docstring for the layout.
    """
    arr = np.asarray(images)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise InputError(f"negative images must be (N, S, S), got shape {arr.shape}")
    if len(names) != arr.shape[0]:
        raise InputError(f"{arr.shape[0]} negative images but {len(names)} names")
    if len(set(names)) != len(names):
        raise InputError("negative names must be unique")
    u8 = arr if arr.dtype == np.uint8 else to_uint8(arr)
    maps = compute_attention_maps(
        model, u8.astype(np.float32) / 255.0, align_net, batch_size, device, progress, precision
    )
    aligned_codes = bool(aligned_codes and align_net is not None)
    if aligned_codes:
        codes = np.concatenate(
            [hash_codes(aligned_images(align_net, u8[i : i + batch_size])) for i in range(0, len(u8), batch_size)]
        )
    else:
        codes = hash_codes(u8)
    bank: dict[str, Any] = {
        "names": [str(n) for n in names],
        "codes": torch.from_numpy(codes),  # (N, 256)
        "aligned_codes": aligned_codes,
        "maps": maps.contiguous(),  # (N, h, w)
        "strategy": strategy,
        "aligned_maps": align_net is not None,
    }
    if include_images:
        bank["images"] = torch.from_numpy(np.ascontiguousarray(u8))  # (N, S, S) uint8
    return bank


def negative_candidates(run_dir: Path, index, cache: str | None) -> tuple[list[str], list[str]]:
    """No Finding images usable as bank negatives, never a test image of the run (split.json):
    (training images of the run, the rest of the run's negative pool)."""
    split = read_split_file(run_dir)
    test = set(split.get("test", []))
    available: set[str] = set()
    if cache:
        available = set(ImageCache.open(cache).names)
    pool = negative_pool(index, exclude=test, available=available)
    train = set(split.get("train", []))
    return [n for n in pool if n in train], [n for n in pool if n not in train]


def bundle_from_run(
    run_dir: str | Path,
    n_negatives: int = 1000,
    data_root: str | None = None,
    cache: str | None = None,
    thresholds: Sequence[float] | float | None = None,
    include_images: bool = False,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    precision: str = "fp32",
    card_name: str | None = None,
    card_version: str | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Build the bundle of a finished training run (see the module docstring).

    Args:
        run_dir: the run folder (checkpoint.pt, config.yaml, split.json).
        n_negatives: bank size; all candidates when fewer. Training images are taken first, in a seeded
            random order.
        data_root, cache: where the run's images are (default: the run config's data.data_root / data.cache).
        dataset: the layout of that data root (default: the run config's data.dataset).
        thresholds: per-class image-probability thresholds for reporting boxes (one number or 14).
        include_images: also store the 8-bit negatives (for Predictor(mode="recompute") without the data).
        log: where notes go (default: stderr).
        card_name, card_version: the model card's name and version (default: the run folder's name, "1";
            cianet.inference.model_card).
        precision: of the bank's maps M-: fp32 (default: a stored artefact should not depend on the machine
            that built it), bf16 or auto (:mod:`cianet.run.precision`).
    """
    say = log or (lambda msg: print(msg, file=sys.stderr))
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir)
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    model, cfg = model_from_checkpoint(ckpt, dev)
    align_net, align_kwargs, canonical = _run_alignment(cfg, dev)
    bank = None
    if cfg.model.kind == "cianet":
        opts = _BankOptions(n_negatives, data_root, cache, dataset, include_images, seed, batch_size, progress, say)
        bank = _bank_of_run(run_dir, model, cfg, align_net, canonical, dev, precision, opts)
    bundle = make_bundle(
        model.cpu(),
        cfg,
        bank=bank,
        align_net=None if align_net is None else align_net.cpu(),
        align_kwargs=align_kwargs,
        canonical=canonical,
        thresholds=thresholds,
        epoch=int(ckpt.get("epoch", -1)),
        run_name=run_dir.resolve().name,
    )
    bundle["card"] = model_card(
        run_dir, cfg, bundle["labels"], bundle["thresholds"], name=card_name, version=card_version
    )
    return bundle


def _run_alignment(cfg, dev: torch.device) -> tuple[nn.Module | None, dict | None, np.ndarray | None]:
    """The run's alignment network, its constructor arguments and the canonical chest at the run's image size
    (from align.pt, else from align.canonical; None each where the run has none)."""
    size = int(cfg.data.image_size)
    align_net, align_kwargs, canonical = None, None, None
    if cfg.align.checkpoint:
        alignment = load_alignment(cfg.align.checkpoint, dev)
        align_net, align_kwargs, canonical = alignment.net, alignment.net_kwargs, alignment.canonical
        if canonical is not None and canonical.shape != (size, size):
            canonical = resize_gray(canonical, size)
    if canonical is None and cfg.align.canonical and Path(cfg.align.canonical).is_file():
        canonical = load_canonical(cfg.align.canonical, size)
    return align_net, align_kwargs, canonical


@dataclass
class _BankOptions:
    """:func:`bundle_from_run`'s arguments about the negative bank (see there)."""

    n_negatives: int
    data_root: str | None
    cache: str | None
    dataset: str | None
    include_images: bool
    seed: int
    batch_size: int
    progress: bool
    say: Callable[[str], None]


def _bank_of_run(
    run_dir: Path,
    model: nn.Module,
    cfg,
    align_net: nn.Module | None,
    canonical: np.ndarray | None,
    dev: torch.device,
    precision: str,
    opts: _BankOptions,
) -> dict[str, Any]:
    """The negative bank of a CIA-Net run: the canonical chest alone when the run paired every image with it,
    else up to ``n_negatives`` of its No Finding images."""
    if (cfg.negatives.fallback_strategy() or cfg.negatives.strategy) == CANONICAL:  # prior: its fallback
        if canonical is None:
            raise InputError(
                f"{run_dir}: the run paired every image with the canonical chest, but neither "
                "align.pt nor align.canonical gives it"
            )
        return negative_bank(
            model,
            np.asarray(canonical)[None],
            [CANONICAL],
            align_net,
            opts.include_images,
            strategy=CANONICAL,
            device=dev,
            precision=precision,
        )
    names, images = _read_bank_negatives(run_dir, cfg, opts)
    order = np.argsort(names)  # a stable, readable bank order
    return negative_bank(
        model,
        np.stack(images)[order],
        [names[i] for i in order],
        align_net,
        opts.include_images,
        batch_size=opts.batch_size,
        device=dev,
        progress=opts.progress,
        aligned_codes=cfg.negatives.aligned_codes,
        precision=precision,
    )


def _bank_cache(cache: str | None, cfg, say: Callable[[str], None]) -> str | None:
    """The image cache to read negatives from: ``--cache`` (which must exist), else the run's while it exists."""
    if cache is not None:
        if not Path(cache).exists():
            raise MissingPathError(f"image cache {cache} (--cache) does not exist")
        return cache
    if cfg.data.cache and not Path(cfg.data.cache).exists():
        say(f"cianet bundle: the run's image cache {cfg.data.cache} no longer exists; decoding image files")
        return None
    return cfg.data.cache


def _read_bank_negatives(run_dir: Path, cfg, opts: _BankOptions) -> tuple[list[str], list[np.ndarray]]:
    """Names and images of up to ``n_negatives`` readable No Finding images of the run's data, in a seeded
    random order, training images first; unreadable ones are skipped (one note)."""
    root = opts.data_root or cfg.data.data_root
    cache = _bank_cache(opts.cache, cfg, opts.say)
    if not root:
        raise UsageError(f"{run_dir}: no data root in the run config: pass --data-root")
    index = open_index(
        root,
        opts.dataset or cfg.data.dataset,
        entry_csv=cfg.data.entry_csv,
        bbox_csv=cfg.data.bbox_csv,
        box_merge=cfg.data.box_merge,
        merge_iou=cfg.data.merge_iou,
    )
    train_pool, rest_pool = negative_candidates(run_dir, index, cache)
    if not train_pool and not rest_pool:
        raise InputError(f"{run_dir}: no No Finding training image found under {root} for the negative bank")
    rng = np.random.default_rng(opts.seed)  # seeded random order, training images first
    ranked = [train_pool[i] for i in rng.permutation(len(train_pool))] + [
        rest_pool[i] for i in rng.permutation(len(rest_pool))
    ]
    source = ImageSource(int(cfg.data.image_size), cache, {r.name: r.path for r in index.records})
    names, images, skipped = [], [], []
    for name in progress_bar(ranked, desc="negatives", disable=not opts.progress):
        if len(names) >= opts.n_negatives:
            break
        try:
            img, _ = source.load(name)
        except (ValueError, FileNotFoundError) as exc:
            skipped.append(f"{name}: {exc}")
            continue
        names.append(name)
        images.append(img)
    if skipped:
        opts.say(f"cianet bundle: skipped {len(skipped)} unreadable negatives (first: {skipped[0]})")
    if not names:
        raise InputError(f"{run_dir}: none of the {len(ranked)} negative candidates could be read")
    return names, images

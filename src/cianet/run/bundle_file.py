"""The model bundle file: one self-contained file to run a trained CIA-Net (or baseline) on new X-rays.

This module writes, reads and validates the file; :mod:`cianet.inference.bundle` builds one from a run.

In memory a bundle is a dict of plain tensors, dicts, lists, strings and numbers. On disk (format 2) it is a
safetensors file whose JSON header describes everything but the tensors (:mod:`cianet.run.bundle_format`:
readable without torch, no pickle); format 1 files (a ``torch.save`` of the dict, loaded with
``torch.load(weights_only=True)``) still load. Keys:

    format, format_version, cianet_version   "cianet-model-bundle", BUNDLE_VERSION, cianet.__version__
    kind                 "cianet" | "baseline"
    model                the network's state dict
    config               the run's config (cianet.config.Config.to_dict())
    labels, box_labels   LABELS, BOX_LABELS (checked against the code on load)
    input_size           S, the network input side
    normalization        {"mean", "std", "input"} (ImageNet statistics on gray x 3)
    thresholds           14 floats: a class's boxes are reported when its image probability is >= this
    alignment            None, or {"model": state dict, "net_kwargs": AlignmentNet kwargs}
    canonical            None, or (S, S) float32 canonical chest
    negatives            the negative bank (below)
    source               {"run": run folder name, "epoch": int}
    card                 the model card (format 2; cianet.inference.model_card): name, version, intended use,
                         training data, metrics, thresholds

The negative bank holds, for N No Finding training images (never a test image of the run):
    names   N image names
    codes   (N, 256) float32 perceptual-hash codes (cianet.negatives.hash_codes of the image at S px, 8-bit,
            aligned first when aligned_codes, as the run's "sim" pairing computed them)
    aligned_codes  optional bool (absent: False): codes of aligned images (the run's negatives.aligned_codes
            with an alignment network); Predictor then hashes each query's aligned image too
    maps    (N, h, w) float32 attention maps M- = model.attention_map(negative), computed once in eval mode
            on the aligned negative when the run aligns (h = w, the model's native grid)
    images  optional (N, S, S) uint8 negatives (only with include_images; lets Predictor(mode="recompute")
            run without the data set)
    strategy "sim" (nearest code) | "canonical" (one entry: the canonical chest)
At inference the negative is picked by hash and its stored M- replaces a second pass through the attention
trunk. Maps are computed from the 8-bit negative (``round(255 x) / 255``) so that recomputing them from the
stored ``images`` gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import cianet
from cianet.config import CANONICAL_CHEST
from cianet.errors import InputError
from cianet.labels import label_set_from
from cianet.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from cianet.models.cianet import grid_side
from cianet.run.bundle_format import check_config, decode, encode, is_safetensors, scrub_config
from cianet.run.checkpoints import torch_read
from cianet.utils.atomic import atomic_write_bytes, stale_temps

BUNDLE_FORMAT = "cianet-model-bundle"
BUNDLE_VERSION = 2  # 1: torch.save dict; 2: safetensors + JSON header (cianet.run.bundle_format)
DEFAULT_THRESHOLD = 0.5  # the paper's operating point (p > 0.5)
REQUIRED_KEYS = (
    "format",
    "format_version",
    "cianet_version",
    "kind",
    "model",
    "config",
    "labels",
    "box_labels",
    "input_size",
    "normalization",
    "thresholds",
    "alignment",
    CANONICAL_CHEST,
    "negatives",
)
BANK_KEYS = ("names", "codes", "maps", "strategy")


def empty_bank() -> dict[str, Any]:
    """The bank of a baseline (which never looks at a negative)."""
    return {
        "names": [],
        "codes": torch.zeros(0, 256),
        "maps": torch.zeros(0, 0, 0),
        "strategy": "none",
        "aligned_maps": False,
    }


def make_bundle(
    model: nn.Module,
    cfg,
    *,
    bank: dict[str, Any] | None = None,
    align_net: nn.Module | None = None,
    align_kwargs: dict[str, Any] | None = None,
    canonical: np.ndarray | torch.Tensor | None = None,
    thresholds: Sequence[float] | float | None = None,
    epoch: int | None = None,
    run_name: str | None = None,
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a bundle dict from a model, its config (cianet.config.Config) and the pieces above."""
    classes = label_set_from(cfg.data.labels, cfg.data.box_labels)  # the data set the model was trained on
    LABELS, BOX_LABELS = classes.names, classes.box_names

    kind = cfg.model.kind
    if kind == "cianet" and (bank is None or len(bank["names"]) == 0):
        raise InputError("a CIA-Net bundle needs a non-empty negative bank")
    if thresholds is None:
        thresholds = DEFAULT_THRESHOLD
    if isinstance(thresholds, (int, float)):
        thresholds = [float(thresholds)] * len(LABELS)
    thresholds = [float(t) for t in thresholds]
    if len(thresholds) != len(LABELS) or not all(0.0 <= t <= 1.0 for t in thresholds):
        raise InputError(f"thresholds must be {len(LABELS)} values in [0, 1], got {thresholds}")
    if (align_net is None) != (align_kwargs is None):
        raise InputError("give both align_net and align_kwargs, or neither")
    net = model.module if hasattr(model, "module") else model
    if canonical is not None:
        canonical = torch.as_tensor(np.asarray(canonical, dtype=np.float32))
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "cianet_version": cianet.__version__,
        "kind": kind,
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "config": scrub_config(cfg.to_dict()),  # no local paths in a file meant to be shared
        "labels": list(LABELS),
        "box_labels": list(BOX_LABELS),
        "input_size": int(cfg.data.image_size),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input": "gray [0,1] x3"},
        "thresholds": thresholds,
        "alignment": None
        if align_net is None
        else {
            "model": {k: v.detach().cpu() for k, v in align_net.state_dict().items()},
            "net_kwargs": dict(align_kwargs),
        },
        CANONICAL_CHEST: canonical,
        "negatives": bank if bank is not None else empty_bank(),
        "source": {"run": run_name or "", "epoch": -1 if epoch is None else int(epoch)},
        "card": dict(card or {}),
    }


def save_bundle(bundle: dict[str, Any], path: str | Path) -> Path:
    """Validate and write ``bundle`` atomically to ``path``."""
    path = Path(path)
    validate_bundle(bundle, path)
    data = encode(bundle)
    for tmp in stale_temps(path):  # a killed earlier write of this file left a temp file (SIGKILL)
        tmp.unlink(missing_ok=True)
    atomic_write_bytes(path, data)
    return path


def validate_bundle(bundle: Any, path: str | Path = "<bundle>") -> dict[str, Any]:
    """Check a bundle against this code; InputError (a ValueError) naming ``path`` and the problem otherwise."""
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{path}: not a cianet model bundle (make one with `cianet bundle --run RUN --out FILE`)")
    missing = [k for k in REQUIRED_KEYS if k not in bundle]
    if missing:
        raise InputError(f"{path}: model bundle is missing {', '.join(missing)}")
    check_config(bundle["config"], path)  # bounds first: nothing is built from an absurd value
    version = bundle["format_version"]
    if not isinstance(version, int) or version > BUNDLE_VERSION:
        raise InputError(
            f"{path}: bundle format {version!r} is newer than this cianet understands "
            f"({BUNDLE_VERSION}); upgrade cianet"
        )
    data_cfg = (bundle["config"].get("data") or {}) if isinstance(bundle["config"], dict) else {}
    try:  # the classes the network was built for: its config's (null: ChestX-ray14's)
        classes = label_set_from(data_cfg.get("labels"), data_cfg.get("box_labels"))
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    LABELS = classes.names
    if list(bundle["labels"]) != list(classes.names):
        raise InputError(
            f"{path}: the bundle's label names differ from those of its config "
            f"({list(bundle['labels'])[:3]}... vs {list(LABELS)[:3]}...)"
        )
    if list(bundle["box_labels"]) != list(classes.box_names):
        raise InputError(f"{path}: the bundle's box label names differ from those of its config")
    kind = bundle["kind"]
    if kind not in ("cianet", "baseline"):
        raise InputError(f"{path}: unknown model kind {kind!r} in bundle (expected cianet or baseline)")
    cfg_kind = (bundle["config"].get("model") or {}).get("kind") if isinstance(bundle["config"], dict) else None
    if cfg_kind != kind:
        raise InputError(f"{path}: bundle kind {kind!r} does not match its config's model.kind {cfg_kind!r}")
    size = bundle["input_size"]
    if not isinstance(size, int) or size <= 0 or size % 32:
        raise InputError(f"{path}: bundle input_size {size!r} is not a positive multiple of 32")
    thr = bundle["thresholds"]
    if not isinstance(thr, list) or len(thr) != len(LABELS):
        raise InputError(f"{path}: bundle thresholds must be a list of {len(LABELS)} numbers")
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 <= t <= 1.0 for t in thr):
        raise InputError(
            f"{path}: bundle thresholds must be numbers in [0, 1] (no NaN), got "
            f"{next(t for t in thr if not (isinstance(t, (int, float)) and 0.0 <= t <= 1.0))!r}"
        )
    bank = bundle["negatives"]
    if not isinstance(bank, dict) or any(k not in bank for k in BANK_KEYS):
        absent = [k for k in BANK_KEYS if not isinstance(bank, dict) or k not in bank]
        raise InputError(f"{path}: bundle negative bank is missing {', '.join(absent)}")
    n = len(bank["names"])
    if kind == "cianet":
        model_cfg = bundle["config"].get("model") or {}
        g = grid_side(size, model_cfg.get("output_stride", 32), model_cfg.get("last_stage", "c5"))
        if n == 0:
            raise InputError(f"{path}: CIA-Net bundle has an empty negative bank")
        if tuple(bank["maps"].shape) != (n, g, g) or tuple(bank["codes"].shape)[0] != n:
            raise InputError(
                f"{path}: negative bank shapes do not agree (names {n}, maps "
                f"{tuple(bank['maps'].shape)}, codes {tuple(bank['codes'].shape)}; expected maps "
                f"({n}, {g}, {g}))"
            )
        if "images" in bank and tuple(bank["images"].shape) != (n, size, size):
            raise InputError(
                f"{path}: negative bank images have shape {tuple(bank['images'].shape)}, expected ({n}, {size}, {size})"
            )
    align = bundle["alignment"]
    if align is not None and (not isinstance(align, dict) or "model" not in align or "net_kwargs" not in align):
        raise InputError(f"{path}: bundle alignment entry must hold model and net_kwargs")
    for what, t in (("negative bank maps", bank.get("maps")), ("negative bank codes", bank.get("codes"))):
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(f"{path}: the {what} hold NaN or infinite values")
    return bundle


def load_bundle(path: str | Path) -> dict[str, Any]:
    """Read a bundle file (format 2: safetensors; format 1: ``torch.load(weights_only=True)``) and validate it;
    errors name the file."""
    path = Path(path)
    if path.is_file() and is_safetensors(path):
        return validate_bundle(decode(path), path)
    return validate_bundle(torch_read(path, "cianet model bundle", " (make one with `cianet bundle`)"), path)

"""Model bundles: one self-contained file to run a trained CIA-Net (or baseline) on new X-rays.

A bundle is a ``torch.save``d dict of plain tensors, dicts, lists, strings and numbers only, so it loads with
``torch.load(weights_only=True)`` and never unpickles arbitrary objects. Keys:

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

The negative bank holds, for N No Finding training images (never a test image of the run):
    names   N image names
    codes   (N, 256) float32 perceptual-hash codes (cianet.negatives.hash_codes of the *unaligned* image at
            S px, 8-bit, as the run's "sim" pairing computed them)
    maps    (N, h, w) float32 attention maps M- = model.attention_map(negative), computed once in eval mode
            on the aligned negative when the run aligns (h = w = S/32)
    images  optional (N, S, S) uint8 negatives (only with include_images; lets Predictor(mode="recompute")
            run without the data set)
    strategy "sim" (nearest code) | "canonical" (one entry: the canonical chest)
At inference the negative is picked by hash and its stored M- replaces a second pass through the attention
trunk. Maps are computed from the 8-bit negative (``round(255 x) / 255``) so that recomputing them from the
stored ``images`` gives the same numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

BUNDLE_FORMAT = "cianet-model-bundle"
BUNDLE_VERSION = 1
DEFAULT_THRESHOLD = 0.5  # the paper's operating point (p > 0.5)
REQUIRED_KEYS = (
    "format", "format_version", "cianet_version", "kind", "model", "config", "labels", "box_labels",
    "input_size", "normalization", "thresholds", "alignment", "canonical", "negatives",
)
BANK_KEYS = ("names", "codes", "maps", "strategy")


def with_weights(build: Callable[[], nn.Module], state: dict[str, torch.Tensor],
                  device: torch.device) -> nn.Module:
    """``build()`` with ``state`` loaded, in eval mode on ``device``.

    The module is built on the meta device (no random initialization, which costs seconds for two ResNet
    trunks) and the bundle's tensors are assigned; a module holding state outside its state dict falls back
    to a normal build.
    """
    with torch.device("meta"):
        module = build()
    module.load_state_dict(state, assign=True)
    if any(t.is_meta for t in list(module.parameters()) + list(module.buffers())):
        module = build()
        module.load_state_dict(state)
    return module.to(device).eval()


def quantize(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> the same images through 8 bits (``round(255 x) / 255``), float32."""
    from cianet.data.io import to_uint8

    return to_uint8(images).astype(np.float32) / 255.0


@torch.no_grad()
def compute_attention_maps(model: nn.Module, images: np.ndarray, align_net: nn.Module | None = None,
                           batch_size: int = 16, device: torch.device | str = "cpu",
                           progress: bool = False) -> torch.Tensor:
    """Attention maps M of gray images ``(N, S, S)`` in [0, 1] -> ``(N, S/32, S/32)`` float32 (CPU).

    The images are aligned first when ``align_net`` is given (as the negatives were in training).
    """
    from cianet.models.backbones import gray_to_input
    from cianet.utils.progress import progress_bar

    model.eval()
    out = []
    starts = range(0, len(images), batch_size)
    for i in progress_bar(starts, desc="negative maps", total=len(starts), disable=not progress):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32))[:, None].to(device)
        if align_net is not None:
            x = align_net(x)["aligned"]  # (B, 1, S, S)
        out.append(model.attention_map(gray_to_input(x)).float().cpu())  # (B, h, w)
    return torch.cat(out) if out else torch.zeros(0, 0, 0)


def negative_bank(model: nn.Module, images: np.ndarray, names: Sequence[str], align_net: nn.Module | None = None,
                  include_images: bool = False, strategy: str = "sim", batch_size: int = 16,
                  device: torch.device | str = "cpu", progress: bool = False) -> dict[str, Any]:
    """The bank of negatives ``images`` ``(N, S, S)`` (float [0, 1] or uint8) named ``names``.

    Codes come from the unaligned 8-bit image; maps from the (aligned) 8-bit image through the model's
    attention branch in eval mode. See the module docstring for the layout.
    """
    from cianet.negatives import hash_codes

    arr = np.asarray(images)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"negative images must be (N, S, S), got shape {arr.shape}")
    if len(names) != arr.shape[0]:
        raise ValueError(f"{arr.shape[0]} negative images but {len(names)} names")
    if len(set(names)) != len(names):
        raise ValueError("negative names must be unique")
    u8 = arr if arr.dtype == np.uint8 else (quantize(arr) * 255.0).round().astype(np.uint8)
    maps = compute_attention_maps(model, u8.astype(np.float32) / 255.0, align_net, batch_size, device, progress)
    bank: dict[str, Any] = {
        "names": [str(n) for n in names],
        "codes": torch.from_numpy(hash_codes(u8)),  # (N, 256)
        "maps": maps.contiguous(),  # (N, h, w)
        "strategy": strategy,
        "aligned_maps": align_net is not None,
    }
    if include_images:
        bank["images"] = torch.from_numpy(np.ascontiguousarray(u8))  # (N, S, S) uint8
    return bank


def empty_bank() -> dict[str, Any]:
    """The bank of a baseline (which never looks at a negative)."""
    return {"names": [], "codes": torch.zeros(0, 256), "maps": torch.zeros(0, 0, 0), "strategy": "none",
            "aligned_maps": False}


def make_bundle(model: nn.Module, cfg, *, bank: dict[str, Any] | None = None, align_net: nn.Module | None = None,
                align_kwargs: dict[str, Any] | None = None, canonical: np.ndarray | torch.Tensor | None = None,
                thresholds: Sequence[float] | float | None = None, epoch: int | None = None,
                run_name: str | None = None) -> dict[str, Any]:
    """Assemble a bundle dict from a model, its config (cianet.config.Config) and the pieces above."""
    import cianet
    from cianet.labels import BOX_LABELS, LABELS
    from cianet.models.backbones import IMAGENET_MEAN, IMAGENET_STD

    kind = cfg.model.kind
    if kind == "cianet" and (bank is None or len(bank["names"]) == 0):
        raise ValueError("a CIA-Net bundle needs a non-empty negative bank")
    if thresholds is None:
        thresholds = DEFAULT_THRESHOLD
    if isinstance(thresholds, (int, float)):
        thresholds = [float(thresholds)] * len(LABELS)
    thresholds = [float(t) for t in thresholds]
    if len(thresholds) != len(LABELS) or not all(0.0 <= t <= 1.0 for t in thresholds):
        raise ValueError(f"thresholds must be {len(LABELS)} values in [0, 1], got {thresholds}")
    if (align_net is None) != (align_kwargs is None):
        raise ValueError("give both align_net and align_kwargs, or neither")
    net = model.module if hasattr(model, "module") else model
    if canonical is not None:
        canonical = torch.as_tensor(np.asarray(canonical, dtype=np.float32))
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "cianet_version": cianet.__version__,
        "kind": kind,
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "config": cfg.to_dict(),
        "labels": list(LABELS),
        "box_labels": list(BOX_LABELS),
        "input_size": int(cfg.data.image_size),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input": "gray [0,1] x3"},
        "thresholds": thresholds,
        "alignment": None if align_net is None else {
            "model": {k: v.detach().cpu() for k, v in align_net.state_dict().items()},
            "net_kwargs": dict(align_kwargs),
        },
        "canonical": canonical,
        "negatives": bank if bank is not None else empty_bank(),
        "source": {"run": run_name or "", "epoch": -1 if epoch is None else int(epoch)},
    }


def save_bundle(bundle: dict[str, Any], path: str | Path) -> Path:
    """Validate and write ``bundle`` atomically to ``path``."""
    from cianet.utils.atomic import atomic_torch_save

    path = Path(path)
    validate_bundle(bundle, path)
    atomic_torch_save(bundle, path)
    return path


def validate_bundle(bundle: Any, path: str | Path = "<bundle>") -> dict[str, Any]:
    """Check a bundle against this code; ValueError naming ``path`` and the problem otherwise."""
    from cianet.labels import BOX_LABELS, LABELS

    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: not a cianet model bundle (make one with `cianet bundle --run RUN --out FILE`)")
    missing = [k for k in REQUIRED_KEYS if k not in bundle]
    if missing:
        raise ValueError(f"{path}: model bundle is missing {', '.join(missing)}")
    version = bundle["format_version"]
    if not isinstance(version, int) or version > BUNDLE_VERSION:
        raise ValueError(f"{path}: bundle format {version!r} is newer than this cianet understands "
                         f"({BUNDLE_VERSION}); upgrade cianet")
    if list(bundle["labels"]) != list(LABELS):
        raise ValueError(f"{path}: the bundle's label names differ from this cianet's LABELS "
                         f"({list(bundle['labels'])[:3]}... vs {list(LABELS)[:3]}...)")
    if list(bundle["box_labels"]) != list(BOX_LABELS):
        raise ValueError(f"{path}: the bundle's box label names differ from this cianet's BOX_LABELS")
    kind = bundle["kind"]
    if kind not in ("cianet", "baseline"):
        raise ValueError(f"{path}: unknown model kind {kind!r} in bundle (expected cianet or baseline)")
    cfg_kind = (bundle["config"].get("model") or {}).get("kind") if isinstance(bundle["config"], dict) else None
    if cfg_kind != kind:
        raise ValueError(f"{path}: bundle kind {kind!r} does not match its config's model.kind {cfg_kind!r}")
    size = bundle["input_size"]
    if not isinstance(size, int) or size <= 0 or size % 32:
        raise ValueError(f"{path}: bundle input_size {size!r} is not a positive multiple of 32")
    thr = bundle["thresholds"]
    if not isinstance(thr, list) or len(thr) != len(LABELS):
        raise ValueError(f"{path}: bundle thresholds must be a list of {len(LABELS)} numbers")
    bank = bundle["negatives"]
    if not isinstance(bank, dict) or any(k not in bank for k in BANK_KEYS):
        absent = [k for k in BANK_KEYS if not isinstance(bank, dict) or k not in bank]
        raise ValueError(f"{path}: bundle negative bank is missing {', '.join(absent)}")
    n = len(bank["names"])
    if kind == "cianet":
        g = size // 32
        if n == 0:
            raise ValueError(f"{path}: CIA-Net bundle has an empty negative bank")
        if tuple(bank["maps"].shape) != (n, g, g) or tuple(bank["codes"].shape)[0] != n:
            raise ValueError(f"{path}: negative bank shapes do not agree (names {n}, maps "
                             f"{tuple(bank['maps'].shape)}, codes {tuple(bank['codes'].shape)}; expected maps "
                             f"({n}, {g}, {g}))")
        if "images" in bank and tuple(bank["images"].shape) != (n, size, size):
            raise ValueError(f"{path}: negative bank images have shape {tuple(bank['images'].shape)}, "
                             f"expected ({n}, {size}, {size})")
    align = bundle["alignment"]
    if align is not None and (not isinstance(align, dict) or "model" not in align or "net_kwargs" not in align):
        raise ValueError(f"{path}: bundle alignment entry must hold model and net_kwargs")
    return bundle


def load_bundle(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a bundle with ``torch.load(weights_only=True)``; clear errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model bundle {path} does not exist (make one with `cianet bundle`)")
    try:
        bundle = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holding arbitrary (unsafe) objects
        raise ValueError(f"{path}: not a readable cianet model bundle ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return validate_bundle(bundle, path)


# ------------------------------------------------------------------------------------------- from a run
def _negative_candidates(run_dir: Path, index, cache: str | None) -> tuple[list[str], list[str]]:
    """No Finding images usable as bank negatives, never a test image of the run (split.json):
    (training images of the run, the rest of the run's negative pool)."""
    import json

    from cianet.engine.pipeline import negative_pool

    split_file = run_dir / "split.json"
    if not split_file.is_file():
        raise FileNotFoundError(f"{split_file} does not exist: is {run_dir} a finished `cianet train` run?")
    try:
        split = json.loads(split_file.read_text())
    except ValueError as exc:
        raise ValueError(f"{split_file}: not valid JSON ({exc})") from None
    test = set(split.get("test", []))
    available: set[str] = set()
    if cache:
        from cianet.data.cache import ImageCache

        available = set(ImageCache.open(cache).names)
    pool = negative_pool(index, exclude=test, available=available)
    train = set(split.get("train", []))
    return [n for n in pool if n in train], [n for n in pool if n not in train]


def bundle_from_run(run_dir: str | Path, n_negatives: int = 1000, data_root: str | None = None,
                    cache: str | None = None, thresholds: Sequence[float] | float | None = None,
                    include_images: bool = False, seed: int = 0, device: str = "cpu", batch_size: int = 16,
                    progress: bool = True) -> dict[str, Any]:
    """Build the bundle of a finished training run (see the module docstring).

    Args:
        run_dir: the run folder (checkpoint.pt, config.yaml, split.json).
        n_negatives: bank size; all candidates when fewer. Training images are taken first, in a seeded
            random order.
        data_root, cache: where the run's images are (default: the run config's data.data_root / data.cache).
        thresholds: per-class image-probability thresholds for reporting boxes (one number or 14).
        include_images: also store the 8-bit negatives (for Predictor(mode="recompute") without the data).
    """
    from cianet.engine.dataset import ImageSource
    from cianet.config import config_from_dict
    from cianet.engine.train import build_network, load_checkpoint, resolve_device
    from cianet.utils.progress import progress_bar

    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir)
    cfg = config_from_dict(ckpt["config"], source=f"{run_dir / 'checkpoint.pt'} config")
    cfg.model.pretrained = False  # the weights come from the checkpoint
    dev = resolve_device(device)
    model = with_weights(lambda: build_network(cfg), ckpt["model"], dev)
    size = int(cfg.data.image_size)
    align_net, align_kwargs, canonical = None, None, None
    if cfg.align.checkpoint:
        align_net, align_kwargs, canonical = _load_alignment(cfg.align.checkpoint, size)
        align_net.to(dev).eval()
    if canonical is None and cfg.align.canonical and Path(cfg.align.canonical).is_file():
        from cianet.data.io import load_xray, resize_gray

        canonical = resize_gray(load_xray(cfg.align.canonical), size)
    bank = None
    if cfg.model.kind == "cianet":
        if cfg.negatives.strategy == "canonical":
            if canonical is None:
                raise ValueError(f"{run_dir}: the run paired every image with the canonical chest, but neither "
                                 "align.pt nor align.canonical gives it")
            bank = negative_bank(model, np.asarray(canonical)[None], ["canonical"], align_net, include_images,
                                 strategy="canonical", device=dev)
        else:
            from cianet.data.nih import NIHIndex

            root = data_root or cfg.data.data_root
            cache = cache if cache is not None else cfg.data.cache
            if cache and not Path(cache).exists():
                cache = None
            if not root:
                raise ValueError(f"{run_dir}: no data root in the run config: pass --data-root")
            index = NIHIndex.from_root(root, entry_csv=cfg.data.entry_csv, bbox_csv=cfg.data.bbox_csv)
            train_pool, rest_pool = _negative_candidates(run_dir, index, cache)
            if not train_pool and not rest_pool:
                raise ValueError(f"{run_dir}: no No Finding training image found under {root} for the negative bank")
            rng = np.random.default_rng(seed)  # seeded random order, training images first
            ranked = [train_pool[i] for i in rng.permutation(len(train_pool))] + \
                     [rest_pool[i] for i in rng.permutation(len(rest_pool))]
            source = ImageSource(size, cache, {r.name: r.path for r in index.records})
            names, images, skipped = [], [], []
            for name in progress_bar(ranked, desc="negatives", disable=not progress):
                if len(names) >= n_negatives:
                    break
                try:
                    img, _ = source.load(name)
                except (ValueError, FileNotFoundError) as exc:
                    skipped.append(f"{name}: {exc}")
                    continue
                names.append(name)
                images.append(img)
            if skipped:
                print(f"cianet bundle: skipped {len(skipped)} unreadable negatives (first: {skipped[0]})",
                      file=sys.stderr)
            if not names:
                raise ValueError(f"{run_dir}: none of the {len(ranked)} negative candidates could be read")
            order = np.argsort(names)  # a stable, readable bank order
            bank = negative_bank(model, np.stack(images)[order], [names[i] for i in order], align_net,
                                 include_images, batch_size=batch_size, device=dev, progress=progress)
    return make_bundle(model.cpu(), cfg, bank=bank, align_net=None if align_net is None else align_net.cpu(),
                       align_kwargs=align_kwargs, canonical=canonical, thresholds=thresholds,
                       epoch=int(ckpt.get("epoch", -1)), run_name=run_dir.resolve().name)


def _load_alignment(path: str | Path, size: int) -> tuple[nn.Module, dict[str, Any], np.ndarray | None]:
    """(AlignmentNet, its constructor kwargs, canonical chest (size, size) or None) from align.pt."""
    from cianet.engine.align import read_alignment_checkpoint
    from cianet.models.alignment import AlignmentNet

    _, raw = read_alignment_checkpoint(path)
    net = with_weights(lambda: AlignmentNet(pretrained=False, **raw["net_kwargs"]), raw["model"], torch.device("cpu"))
    canonical = raw.get("canonical")
    if canonical is not None:
        canonical = canonical.float().numpy()
        if canonical.shape != (size, size):
            from cianet.data.io import resize_gray

            canonical = resize_gray(canonical, size)
    return net, dict(raw["net_kwargs"]), canonical

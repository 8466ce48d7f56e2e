"""The canonical chest (paper section 3): the mean of random No Finding images, cropped to the two lungs.

The lung box is found automatically on the mean image (:func:`find_lung_crop`):

1. smooth the mean with a Gaussian (sigma = S/100) to remove the noise of a finite average;
2. threshold: Otsu's threshold computed on the central window (x in 20-80 %, y in 15-70 % of the image,
   where the lungs and the mediastinum are), "dark" = below it;
3. keep only dark pixels *enclosed in their row* by brighter pixels on both sides: the lungs lie between
   the mediastinum and the chest walls, whereas the air around the body (dark as well) touches the image
   side, so this cuts the lungs from the background even where they touch it at the apices;
4. the two largest connected components must lie one on each side of the image centre, each cover at
   least 1 % of the image and the smaller at least a quarter of the larger; if not, the threshold is
   lowered in steps toward the central window's minimum and steps 2-4 retried;
5. the crop is their joint bounding box plus a margin (4 % of the side), clipped to the image.

If no threshold gives two plausible lungs, a fixed central crop (x 10-90 %, y 5-85 %) is used with a
warning. ``--crop`` overrides all of this.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from cianet.config import CANONICAL_CHEST
from cianet.data.cache import ImageCache, read_image
from cianet.data.io import XrayReadError, load_xray, resize_gray, to_uint8
from cianet.data.layouts import open_index
from cianet.errors import InputError, MissingPathError, UsageError
from cianet.utils.atomic import atomic_write_bytes, atomic_write_json
from cianet.utils.progress import progress_enabled

log = logging.getLogger(__name__)

#: Fallback crop as fractions of the side: (x0, y0, x1, y1).
FALLBACK_CROP: tuple[float, float, float, float] = (0.10, 0.05, 0.90, 0.85)


def mean_image(images: Iterable[np.ndarray]) -> np.ndarray:
    """Pixel-wise mean of equally sized ``(H, W)`` images (accumulated in float64) -> float32 ``(H, W)``."""
    acc: np.ndarray | None = None
    n = 0
    for img in images:
        a = np.asarray(img, dtype=np.float64)
        if a.ndim != 2:
            raise InputError(f"mean_image expects (H, W) images, image {n} has shape {a.shape}")
        if acc is None:
            acc = np.zeros_like(a)
        elif a.shape != acc.shape:
            raise InputError(f"mean_image: image {n} has shape {a.shape}, expected {acc.shape}")
        acc += a
        n += 1
    if acc is None:
        raise InputError("mean_image: no images")
    return (acc / n).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape): maximizes the between-class variance of a histogram."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    p = hist / hist.sum()
    w0 = np.cumsum(p)  # weight of the class "<= threshold"
    mu0 = np.cumsum(p * centers)
    w1 = 1.0 - w0
    ok = (w0 > 1e-12) & (w1 > 1e-12)
    between = np.zeros_like(w0)
    between[ok] = (mu0[-1] * w0[ok] - mu0[ok]) ** 2 / (w0[ok] * w1[ok])
    # The threshold separates bin k from bin k+1 (upper edge of bin k). Between well separated modes
    # the criterion is flat over the gap: take the middle of the maximal plateau.
    best = np.flatnonzero(between >= between.max() * (1.0 - 1e-9))
    return float(edges[int(best[len(best) // 2]) + 1])


def _lung_components(smooth: np.ndarray, threshold: float) -> np.ndarray | None:
    """Mask of the two lungs at ``threshold`` or None when they are not plausible (see module doc)."""
    # lazy: scipy takes about a second to import and only this function needs it
    from scipy import ndimage as ndi

    h, w = smooth.shape
    bright = smooth >= threshold
    left_wall = np.maximum.accumulate(bright, axis=1)  # a brighter pixel somewhere to the left
    right_wall = np.maximum.accumulate(bright[:, ::-1], axis=1)[:, ::-1]
    enclosed = ~bright & left_wall & right_wall
    labels, n = ndi.label(enclosed)
    if n < 2:
        return None
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    a, b = np.argsort(sizes)[::-1][:2] + 1
    sa, sb = sizes[a - 1], sizes[b - 1]
    if sb < 0.01 * h * w or sb < 0.25 * sa:
        return None
    xa = np.nonzero(labels == a)[1].mean()
    xb = np.nonzero(labels == b)[1].mean()
    if not (min(xa, xb) < w / 2 < max(xa, xb)):
        return None
    return (labels == a) | (labels == b)


def search_lung_box(mean: np.ndarray, margin: float = 0.04, steps: int = 6) -> tuple[int, int, int, int] | None:
    """Box ``(x0, y0, x1, y1)`` bounding the two lungs found on ``mean`` (module doc), or None if not found."""
    # lazy: scipy takes about a second to import and only this function needs it
    from scipy import ndimage as ndi

    m = np.asarray(mean, dtype=np.float64)
    if m.ndim != 2 or min(m.shape) < 16:
        raise InputError(f"find_lung_crop expects an (H, W) image of at least 16 px, got shape {m.shape}")
    h, w = m.shape
    smooth = ndi.gaussian_filter(m, sigma=max(h, w) / 100.0)
    central = smooth[int(0.15 * h) : int(0.70 * h), int(0.20 * w) : int(0.80 * w)]
    t0 = otsu_threshold(central)
    lo = float(central.min())
    for k in range(steps):
        lungs = _lung_components(smooth, t0 - (t0 - lo) * k / (steps + 1))
        if lungs is not None:
            ys, xs = np.nonzero(lungs)
            mx, my = margin * w, margin * h
            x0 = int(max(0, np.floor(xs.min() - mx)))
            y0 = int(max(0, np.floor(ys.min() - my)))
            x1 = int(min(w, np.ceil(xs.max() + 1 + mx)))
            y1 = int(min(h, np.ceil(ys.max() + 1 + my)))
            return x0, y0, x1, y1
    return None


def fallback_crop(shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The fixed central crop :data:`FALLBACK_CROP` for an image ``shape = (H, W)``."""
    h, w = shape
    fx0, fy0, fx1, fy1 = FALLBACK_CROP
    return int(round(fx0 * w)), int(round(fy0 * h)), int(round(fx1 * w)), int(round(fy1 * h))


def find_lung_crop(mean: np.ndarray, margin: float = 0.04, steps: int = 6) -> tuple[int, int, int, int]:
    """Box ``(x0, y0, x1, y1)`` (pixel edges, ``mean[y0:y1, x0:x1]``) tightly bounding the two lungs.

    Args:
        mean: ``(H, W)`` mean image (lungs dark, bones/mediastinum bright).
        margin: added on every side, as a fraction of the side length.
        steps: thresholds tried, from Otsu's down toward the central minimum.

    Falls back to :func:`fallback_crop` with a logged warning when no plausible lungs are found.
    """
    box = search_lung_box(mean, margin=margin, steps=steps)
    if box is None:
        _log_fallback()
        box = fallback_crop(np.asarray(mean).shape)
    return box


def _log_fallback() -> None:
    log.warning(
        "find_lung_crop: no two plausible lung fields found on the mean image; "
        "using the central crop %s of the side (pass --crop to override)",
        FALLBACK_CROP,
    )


def check_crop(crop: Sequence[int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Validate ``(x0, y0, x1, y1)`` against an image ``shape = (H, W)``; ValueError naming the problem."""
    if len(crop) != 4:
        raise InputError(f"crop must be x0,y0,x1,y1, got {tuple(crop)}")
    x0, y0, x1, y1 = (int(v) for v in crop)
    h, w = shape
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise InputError(f"crop {(x0, y0, x1, y1)} is not a non-empty box inside the {w}x{h} mean image")
    return x0, y0, x1, y1


def crop_and_resize(mean: np.ndarray, crop: Sequence[int], size: int) -> np.ndarray:
    """``mean[y0:y1, x0:x1]`` resized to ``(size, size)`` float32 (the aspect ratio is not kept)."""
    x0, y0, x1, y1 = check_crop(crop, mean.shape)
    return resize_gray(np.asarray(mean[y0:y1, x0:x1], dtype=np.float32), size)


def select_canonical_records(index: Any, n: int = 500, seed: int = 0, cache: Any = None) -> list:
    """``n`` random No Finding records of ``index`` (all of them if fewer; a warning says so).

    Candidates are the No Finding records whose image is found (``path``) or is in ``cache``, sorted by
    name so that the draw depends on ``seed`` only.
    """
    if n <= 0:
        raise InputError(f"n must be positive, got {n}")
    candidates = sorted(
        (r for r in index.records if r.no_finding and (r.path is not None or (cache is not None and r.name in cache))),
        key=lambda r: r.name,
    )
    if not candidates:
        raise InputError(f"{index.root}: no No Finding image found (need the image files or a cache holding them)")
    if len(candidates) < n:
        log.warning(
            "only %d No Finding images available; the canonical chest averages all of them (asked %d)",
            len(candidates),
            n,
        )
        return candidates
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(candidates), size=n, replace=False))
    return [candidates[i] for i in picks]


@dataclass
class MeanResult:
    """The mean of a list of records: ``mean`` float32 ``(size, size)``, the names averaged and those skipped."""

    mean: np.ndarray
    used: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def mean_of_records(records: Sequence, size: int, cache: Any = None, progress: bool | None = None) -> MeanResult:
    """Mean of the records' images resized to ``size`` (from ``cache`` when it holds them); unreadable
    images are skipped with a warning. Raises ValueError when none could be read."""
    acc = np.zeros((size, size), dtype=np.float64)
    used: list[str] = []
    failed: dict[str, str] = {}
    disable = not progress_enabled(None if progress is None else not progress)  # honours CIANET_PROGRESS
    for rec in tqdm(records, desc="canonical: averaging", unit="img", disable=disable):
        try:
            img, _ = read_image(rec.name, rec.path, cache)
        except XrayReadError as exc:
            failed[rec.name] = str(exc)
            continue
        acc += resize_gray(img, size)
        used.append(rec.name)
    if failed:
        log.warning("canonical: skipped %d unreadable images, e.g. %s", len(failed), next(iter(failed.values())))
    if not used:
        raise InputError("canonical: none of the selected No Finding images could be read")
    return MeanResult((acc / len(used)).astype(np.float32), used, failed)


def choose_crop(mean: np.ndarray, crop: Sequence[int] | None = None) -> tuple[tuple[int, int, int, int], str]:
    """``(crop, source)`` of the canonical chest on ``mean``: ``crop`` itself when given (``"user"``), else the
    lungs' box (:func:`search_lung_box`, ``"auto"``) or, when no lungs are found, :func:`fallback_crop`
    (``"fallback-central"``). Logs nothing: each caller tells its user about a fallback its own way."""
    if crop is not None:
        return check_crop(crop, mean.shape), "user"
    box = search_lung_box(mean)
    if box is None:
        return fallback_crop(mean.shape), "fallback-central"
    return box, "auto"


@dataclass
class CanonicalChest:
    """The canonical chest ``image`` float32 ``(size, size)``, its ``crop`` on the mean, where the crop came
    from (:func:`choose_crop`) and the mean it was cropped from (``averaged``: also the images used)."""

    image: np.ndarray
    crop: tuple[int, int, int, int]
    crop_source: str
    averaged: MeanResult


def canonical_chest(
    index: Any,
    n: int,
    size: int,
    seed: int,
    crop: Sequence[int] | None = None,
    cache: Any = None,
    progress: bool | None = None,
) -> CanonicalChest:
    """The one rule of the canonical chest: the mean of ``n`` random No Finding images of ``index`` (read
    from ``cache``, an opened ImageCache, when it holds them) at ``size``, cropped (:func:`choose_crop`) and
    resized back to ``size``."""
    records = select_canonical_records(index, n=n, seed=seed, cache=cache)
    averaged = mean_of_records(records, size, cache=cache, progress=progress)
    box, source = choose_crop(averaged.mean, crop)
    return CanonicalChest(crop_and_resize(averaged.mean, box, size), box, source, averaged)


def build_canonical(
    index: Any,
    n: int = 500,
    size: int = 256,
    seed: int = 0,
    crop: Sequence[int] | None = None,
    cache: Any = None,
    progress: bool | None = None,
) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray]:
    """The canonical chest of an :class:`~cianet.data.nih.NIHIndex`.

    Args:
        index: the dataset index (No Finding records are the candidates).
        n: images averaged (the paper: 500).
        size: side of the mean and of the canonical chest.
        seed: the random draw of the images.
        crop: ``(x0, y0, x1, y1)`` on the ``size x size`` mean instead of :func:`find_lung_crop`.
        cache: an :class:`~cianet.data.cache.ImageCache` (or its folder) to read images from.

    Returns:
        ``(canonical (size, size) float32, crop, mean (size, size) float32)``.
    """
    if isinstance(cache, (str, Path)):
        cache = ImageCache.open(cache)
    chest = canonical_chest(index, n, size, seed, crop=crop, cache=cache, progress=progress)
    if chest.crop_source == "fallback-central":
        _log_fallback()  # as find_lung_crop does
    return chest.image, chest.crop, chest.averaged.mean


# ------------------------------------------------------------------------------------------ the artefact
def load_canonical(path: str | Path, size: int) -> np.ndarray:
    """The canonical chest PNG at ``path`` as float32 ``(size, size)`` in [0, 1]; the one reader of the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"canonical chest {path} does not exist (make one with `cianet canonical`)")
    return resize_gray(load_xray(path), size)


def read_canonical_crop(path: str | Path) -> tuple[tuple[int, int, int, int], int] | None:
    """``(crop (x0, y0, x1, y1), size)`` of the canonical chest PNG at ``path``, from the ``<stem>.json`` that
    :func:`save_canonical` writes beside it; None when there is no such file (a canonical chest made by hand)."""

    meta_path = Path(path).with_suffix(".json")
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        size = int(meta["size"])
        crop = check_crop(meta["crop"], (size, size))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{meta_path}: cannot read the canonical crop ({type(exc).__name__}: {exc})") from None
    return crop, size


def _write_png(path: Path, img: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img), mode="L").save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_canonical(out: str | Path, canonical: np.ndarray, mean: np.ndarray, info: dict[str, Any]) -> dict[str, Path]:
    """Write ``out`` (the canonical chest PNG), ``<stem>_mean.png`` and ``<stem>.json`` (``info`` plus the file
    names) atomically; returns the three paths."""
    out = Path(out)
    mean_path, json_path = out.with_name(f"{out.stem}_mean.png"), out.with_suffix(".json")
    _write_png(out, canonical)
    _write_png(mean_path, mean)
    atomic_write_json(json_path, {CANONICAL_CHEST: out.name, "mean": mean_path.name, **info})
    return {CANONICAL_CHEST: out, "mean": mean_path, "json": json_path}


def make_canonical(
    data_root: str | Path,
    out: str | Path,
    n: int = 500,
    size: int = 512,
    seed: int = 0,
    crop: Sequence[int] | None = None,
    cache: str | Path | None = None,
    entry_csv: str | None = None,
    progress: bool | None = None,
    dataset: str = "auto",
) -> dict[str, Any]:
    """``cianet canonical``: build the canonical chest of a data root and write it with :func:`save_canonical`.

    Returns the JSON sidecar's contents plus ``paths`` (the three files written). ``crop_source`` is
    ``"user"``, ``"auto"`` or ``"fallback-central"`` (the lungs were not found on the mean image).
    """
    if size <= 0:
        raise UsageError(f"--image-size must be positive, got {size}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must name a .png file, got {out}")
    opened = None
    if cache:
        opened = ImageCache.open(cache)
    index = open_index(data_root, dataset, entry_csv=entry_csv)  # `dataset`: the layout (auto: detected)
    chest = canonical_chest(index, n, size, seed, crop=crop, cache=opened, progress=progress)
    res = chest.averaged
    info = {
        "crop": list(chest.crop),
        "crop_source": chest.crop_source,  # the command warns on "fallback-central"
        "crop_frame": f"pixel edges x0,y0,x1,y1 on the {size}x{size} mean image",
        "size": size,
        "n_requested": n,
        "n_used": len(res.used),
        "seed": seed,
        "source": str(Path(data_root).resolve()),
        "entry_csv": str(index.entry_csv) if getattr(index, "entry_csv", None) else entry_csv,
        "cache": str(Path(cache).resolve()) if cache else None,
        "skipped": res.failed,
        "images": res.used,
    }
    paths = save_canonical(out, chest.image, res.mean, info)
    return {CANONICAL_CHEST: out.name, "mean": paths["mean"].name, **info, "paths": paths}

"""``cianet align-eval``: how well an alignment checkpoint aligns a data set.

The measures themselves are :mod:`cianet.evaluation.alignment_measures` (pure functions); this module reads
the checkpoint, the images and, on a phantom, ``synth_truth.csv``, and formats the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cianet.data.cache import ImageCache
from cianet.data.layouts import open_index
from cianet.errors import InputError, UsageError
from cianet.evaluation.alignment_measures import measure_alignment, read_synth_truth
from cianet.run.checkpoints import load_alignment
from cianet.run.datasets import ImageSource
from cianet.run.device import resolve_device
from cianet.run.scoring import json_safe
from cianet.utils.atomic import atomic_write_json

#: The keys of ``net_kwargs`` that hold the bounds (absent from checkpoints of format 1).
BOUND_KEYS = ("center", "max_shift", "max_scale", "max_rotation")


def evaluate_alignment(
    align: str | Path,
    data_root: str | Path,
    cache: str | Path | None = None,
    n: int | None = 400,
    seed: int = 0,
    size: int | None = None,
    entry_csv: str | None = None,
    device: str = "cpu",
    warps: dict | None = None,
    batch_size: int = 64,
    out: str | Path | None = None,
    dataset: str = "auto",
) -> dict[str, Any]:
    """Measure the alignment network of ``align`` (``align.pt`` or its folder) on ``data_root``.

    ``n`` images (all when None or fewer exist) are drawn with ``seed`` from those on disk or in ``cache``,
    and read at ``size`` (default: the cache's size, else the checkpoint's training size). Image ``i`` is
    warped by a known random warp drawn with ``seed``
    (:data:`~cianet.evaluation.alignment_measures.DEFAULT_WARPS` unless ``warps`` says otherwise). When the
    data root holds a phantom's ``synth_truth.csv`` the residual to the true deformations is measured too,
    overall and by strength, with the network's centre as reference frame.

    Returns :func:`~cianet.evaluation.alignment_measures.measure_alignment`'s report plus the checkpoint, its
    bounds, whether they were stored in it, and the image names; also written to ``out`` as JSON (NaN as
    null) when given.
    """
    if n is not None and n <= 0:
        raise UsageError(f"--n must be positive, got {n}")
    loaded = load_alignment(align, resolve_device(device))
    net, path = loaded.net, loaded.path
    index = open_index(data_root, dataset, entry_csv=entry_csv)  # `dataset`: the layout (auto: detected)
    opened = None
    if cache:
        opened = ImageCache.open(cache)
    size = int(size or (opened.size if opened is not None else loaded.input_size or 256))
    names = sorted(r.name for r in index.records if r.path is not None or (opened is not None and r.name in opened))
    if not names:
        raise InputError(f"no readable image under {data_root} (nor in the cache) to measure the alignment on")
    if n and len(names) > n:
        picks = np.random.default_rng(seed).choice(len(names), size=n, replace=False)
        names = [names[i] for i in np.sort(picks)]
    use_cache = opened is not None and opened.size == size
    source = ImageSource(size, str(cache) if use_cache else None, {r.name: r.path for r in index.records})
    dev = next(net.parameters()).device
    images = torch.from_numpy(np.stack([source.load(name)[0] for name in names]))[:, None].to(dev)
    truth, groups = _phantom_truth(data_root, names)
    report = measure_alignment(
        net.predict_params,
        images,
        truth=truth,
        groups=groups,
        reference=net.center,
        position=net.bound_position,
        seed=seed,
        warps=warps,
        batch_size=batch_size,
    )
    result = json_safe(
        {
            "checkpoint": str(path),
            "data_root": str(data_root),
            "cache": None if cache is None else str(cache),
            "epoch": loaded.epoch,
            "net_bounds": net.bounds(),
            "bounds_stored": all(k in loaded.net_kwargs for k in BOUND_KEYS),
            **report,
            "names": names,
        }
    )
    if out is not None:
        atomic_write_json(out, result)
    return result


def _phantom_truth(data_root: str | Path, names: list[str]) -> tuple[np.ndarray | None, dict | None]:
    """The true deformation parameters of ``names`` and their masks by strength; (None, None) off a phantom."""
    truth_path = Path(data_root) / "synth_truth.csv"
    if not truth_path.is_file():
        return None, None
    table = read_synth_truth(truth_path)
    missing = [name for name in names if name not in table]
    if missing:
        raise InputError(f"{truth_path}: no row for {len(missing)} of the images, e.g. {missing[0]}")
    truth = np.array([table[name]["params"] for name in names])
    strength = np.array([table[name]["strength"] for name in names])
    groups = {f"strength_{s}": strength == s for s in ("none", "mild", "strong") if (strength == s).any()}
    return truth, groups


def format_alignment_report(rep: dict[str, Any]) -> str:
    """The text ``cianet align-eval`` prints."""
    w, spec = rep["warp"], rep["warps"]
    lines = [
        f"alignment {rep['checkpoint']} (epoch {rep['epoch'] + 1}) on {rep['n_images']} images of {rep['data_root']} "
        f"at {rep['image_size'][0]}x{rep['image_size'][1]} px",
        f"known random warps (rotation up to {spec['max_rotation_deg']:g} deg, scales "
        f"{spec['scale_range'][0]:g}-{spec['scale_range'][1]:g}, shifts up to {100 * spec['max_shift_frac']:g}% of "
        f"the width; seed {rep['seed']}):",
        f"  residual {w['residual_px']:.2f} px (median {w['residual_px_median']:.2f} px, "
        f"{w['residual_pct_width']:.2f}% of the width) vs {w['baseline_px']:.2f} px for the warp alone: "
        f"{100 * w['share_removed']:.1f}% of the warp removed",
    ]
    if "bounds" in rep:
        b = rep["bounds"]
        per = ", ".join(f"{k} {100 * v:.1f}%" for k, v in b["per_param"].items())
        lines.append(f"parameters within {100 * b['tol']:g}% of a bound: {100 * b['share_params']:.1f}% ({per})")
    if "truth" in rep:
        t = rep["truth"]
        lines.append("known deformations (synth_truth.csv), against the ideal U R (R = the network's centre):")
        rows = (
            ("deformed", "deformed"),
            ("strength_mild", "mild"),
            ("strength_strong", "strong"),
            ("strength_none", "undeformed"),
            ("deformed_fitted", "deformed, fitted R"),
        )
        for key, label in rows:
            s = t.get(key)
            if not s or not s.get("n"):
                continue
            removed = s.get("share_removed")
            share = "" if removed is None else f": {100 * removed:.1f}% removed"
            lines.append(
                f"  {label:<18} n={s['n']:<4} residual {s['residual_px']:.2f} px vs {s['baseline_px']:.2f} px "
                f"for the deformation alone{share}"
            )
    if not rep.get("bounds_stored", True):
        lines.append("note: this checkpoint predates stored bounds; it was loaded with the old default bounds")
    return "\n".join(lines)

"""Measuring an alignment: how much of a known deformation the predicted parameters undo.

Parameters are ``(tx, ty, sx, sy, theta)`` with the convention of docs/architecture.md: the aligned image
samples the input at ``A p`` for every normalized point ``p`` of the aligned frame. Every residual here is
a mean distance over a ``k x k`` grid of aligned-frame points ``p`` (cell centres over ``[-1, 1]^2``), taken
between two maps of those points into an image, and converted to pixels of that image (``dx W/2``,
``dy H/2``).

Three measures:

- **Known random warps** (any data, real X-rays too): warp image ``I`` by a known ``W`` (``I'(p) =
  I(W p)``) and predict ``P = P(I)``, ``P' = P(I')``. The aligned ``I'`` is ``I(W P' p)``, the aligned ``I``
  is ``I(P p)``; a perfect alignment has ``W P' = P``. The residual is ``|W P' p - P p|`` in pixels of
  ``I``; the warp alone (a network that ignores its input, ``P' = P``) leaves ``|W P p - P p|``. The share
  of the warp removed is ``1 - mean residual / mean warp displacement``.
- **Known deformations** (the phantom's ``synth_truth.csv``, whose parameters ``U`` undo each image's
  deformation): the ideal prediction is ``U R``, where ``R`` is the reference frame the network is trained
  toward (its centre, the canonical crop's parameters). The residual is ``|P p - U R p|``, the
  deformation alone leaves ``|R p - U R p|``. Because ``R`` is a convention, the residual is also given
  with the reference frame fitted to the predictions (least squares, :func:`fit_reference`): what is left
  is the part of the error no choice of canonical frame can explain.
- **Bounds**: the share of predicted parameters within ``tol`` (1 %) of the range of their bound, in the
  bounded coordinate (``-1 .. 1``, log scale for ``sx, sy``; ``AlignmentNet.bound_position``).

Everything is float64 and pure: numbers in, numbers out. :func:`measure_alignment` runs a predictor over
images and assembles the report.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cianet.errors import InputError
from cianet.models.alignment import warp

PARAM_NAMES = ("tx", "ty", "sx", "sy", "theta")

#: The check of issue 9: rotations up to 12 degrees, scales 0.85-1.15, shifts up to 6 % of the width.
DEFAULT_WARPS = {"max_rotation_deg": 12.0, "scale_range": (0.85, 1.15), "max_shift_frac": 0.06}


def _as64(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)


def matrices(params) -> np.ndarray:
    """``(N, 5)`` parameters -> ``(N, 3, 3)`` float64 homogeneous matrices of equation 1."""
    p = _as64(params)
    if p.ndim != 2 or p.shape[1] != 5:
        raise ValueError(f"params must be (N, 5) (tx, ty, sx, sy, theta), got shape {p.shape}")
    tx, ty, sx, sy, th = p.T
    c, s = np.cos(th), np.sin(th)
    m = np.zeros((p.shape[0], 3, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = sx * c, -sy * s, tx
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = sx * s, sy * c, ty
    m[:, 2, 2] = 1.0
    return m


def grid(k: int = 8) -> np.ndarray:
    """``(k*k, 2)`` float64 normalized ``(x, y)`` cell centres of a ``k x k`` grid over ``[-1, 1]^2``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    c = (np.arange(k) + 0.5) * (2.0 / k) - 1.0
    xx, yy = np.meshgrid(c, c, indexing="xy")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map ``(K, 2)`` points through ``(N, 3, 3)`` matrices -> ``(N, K, 2)``."""
    return pts @ m[:, :2, :2].transpose(0, 2, 1) + m[:, None, :2, 2]


def pixel_distance(a: np.ndarray, b: np.ndarray, size: Sequence[float]) -> np.ndarray:
    """Euclidean distance in pixels between normalized points ``a``, ``b`` ``(..., 2)`` of an image of
    ``size = (W, H)``."""
    w, h = float(size[0]), float(size[1])
    d = (a - b) * np.array([w / 2.0, h / 2.0])
    return np.sqrt((d**2).sum(-1))


def _size(size) -> tuple[float, float]:
    if isinstance(size, (int, float)):
        return float(size), float(size)
    return float(size[0]), float(size[1])


def warp_residual(pred, pred_warped, warps, size, k: int = 8) -> dict[str, np.ndarray]:
    """Per image: ``residual`` = mean ``|W P' p - P p|`` and ``baseline`` = mean ``|W P p - P p|`` over the
    grid, in pixels of the original image of ``size`` (``S`` or ``(W, H)``). All inputs ``(N, 5)``."""
    p, pw, w = matrices(pred), matrices(pred_warped), matrices(warps)
    if not (p.shape == pw.shape == w.shape):
        raise ValueError(
            f"pred, pred_warped and warps must have the same shape, got {p.shape[:1]}, {pw.shape[:1]}, {w.shape[:1]}"
        )
    pts, sz = grid(k), _size(size)
    ref = apply(p, pts)
    return {
        "residual": pixel_distance(apply(w @ pw, pts), ref, sz).mean(1),
        "baseline": pixel_distance(apply(w @ p, pts), ref, sz).mean(1),
    }


def truth_residual(pred, truth, reference, size, k: int = 8) -> dict[str, np.ndarray]:
    """Per image: ``residual`` = mean ``|P p - U R p|`` and ``baseline`` = mean ``|R p - U R p|`` over the
    grid, in pixels of the image of ``size``. ``pred``, ``truth`` (the undo parameters ``U``): ``(N, 5)``;
    ``reference``: ``(5,)`` parameters or a ``(3, 3)`` matrix (e.g. from :func:`fit_reference`)."""
    p, u = matrices(pred), matrices(truth)
    if p.shape != u.shape:
        raise ValueError(f"pred and truth must have the same shape, got {p.shape[:1]} and {u.shape[:1]}")
    r = _as64(reference)
    r = r if r.shape == (3, 3) else matrices(r.reshape(1, 5))[0]
    pts, sz = grid(k), _size(size)
    target = apply(u @ r, pts)
    return {
        "residual": pixel_distance(apply(p, pts), target, sz).mean(1),
        "baseline": pixel_distance(apply(np.broadcast_to(r, p.shape), pts), target, sz).mean(1),
    }


def fit_reference(pred, truth, size=(1.0, 1.0), k: int = 8) -> np.ndarray:
    """The affine reference ``R`` ``(3, 3)`` that minimizes ``sum |P p - U R p|^2`` over images and grid
    points (distances weighted as pixels of an image of ``size``): linear least squares in the 6 entries of
    ``R``, since ``U R p~ = M_U (R p~) + t_U``."""
    p, u = matrices(pred), matrices(truth)
    pts, (w, h) = grid(k), _size(size)
    ph = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)  # (K, 3) homogeneous
    scale = np.array([w / 2.0, h / 2.0])
    rows, rhs = [], []
    for i in range(len(p)):
        m, t = u[i, :2, :2], u[i, :2, 2]
        # component j of M (R2 p~), R2 = [[a b c], [d e f]]: M[j, 0] (a b c).p~ + M[j, 1] (d e f).p~
        design = np.concatenate([np.einsum("j,kc->kjc", m[:, 0], ph), np.einsum("j,kc->kjc", m[:, 1], ph)], axis=2)
        rows.append((design * scale[None, :, None]).reshape(-1, 6))  # (K*2, 6)
        rhs.append(((apply(p[i : i + 1], pts)[0] - t) * scale).reshape(-1))
    sol, *_ = np.linalg.lstsq(np.concatenate(rows), np.concatenate(rhs), rcond=None)
    r = np.eye(3)
    r[0], r[1] = sol[:3], sol[3:]
    return r


def bound_share(positions, tol: float = 0.01) -> dict[str, Any]:
    """Share of parameters within ``tol`` of the range of their bound. ``positions``: ``(N, 5)`` bounded
    coordinates in ``[-1, 1]`` (``AlignmentNet.bound_position``); the range is 2, so "within 1 %" is
    ``|u| >= 1 - 2 tol``."""
    u = np.abs(_as64(positions))
    if u.ndim != 2 or u.shape[1] != 5:
        raise ValueError(f"positions must be (N, 5), got shape {u.shape}")
    at = u >= 1.0 - 2.0 * tol
    return {
        "share_params": float(at.mean()) if at.size else float("nan"),
        "share_images_any": float(at.any(1).mean()) if at.size else float("nan"),
        "per_param": {n: float(at[:, j].mean()) if len(at) else float("nan") for j, n in enumerate(PARAM_NAMES)},
        "tol": tol,
    }


def summarize(residual: np.ndarray, baseline: np.ndarray, width: float) -> dict[str, float]:
    """Mean and median residual (pixels and % of the width), the warp/deformation alone, and the share
    removed ``1 - mean residual / mean baseline``."""
    residual, baseline = np.asarray(residual, np.float64), np.asarray(baseline, np.float64)
    if residual.size == 0:
        return {"n": 0}
    mean_r, mean_b = float(residual.mean()), float(baseline.mean())
    return {
        "n": int(residual.size),
        "residual_px": mean_r,
        "residual_px_median": float(np.median(residual)),
        "residual_pct_width": 100.0 * mean_r / width,
        "baseline_px": mean_b,
        "share_removed": 1.0 - mean_r / mean_b if mean_b > 0 else float("nan"),
    }


def random_warps(
    n: int, seed: int = 0, max_rotation_deg: float = 12.0, scale_range=(0.85, 1.15), max_shift_frac: float = 0.06
) -> np.ndarray:
    """``(n, 5)`` float64 warps: ``theta`` uniform in ``+-max_rotation_deg``, ``sx``, ``sy`` independently
    log-uniform in ``scale_range``, ``tx``, ``ty`` uniform in ``+-max_shift_frac`` of the width (``2 *
    frac`` normalized units). numpy's generator seeded with ``seed``."""
    lo, hi = (float(v) for v in scale_range)
    if not (0 < lo <= hi) or max_shift_frac < 0 or max_rotation_deg < 0:
        raise ValueError(f"bad warp ranges: scale {scale_range}, shift {max_shift_frac}, rotation {max_rotation_deg}")
    u = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 5))
    mid, half = (math.log(hi) + math.log(lo)) / 2, (math.log(hi) - math.log(lo)) / 2
    return np.stack(
        [
            2 * max_shift_frac * u[:, 0],
            2 * max_shift_frac * u[:, 1],
            np.exp(mid + half * u[:, 2]),
            np.exp(mid + half * u[:, 3]),
            math.radians(max_rotation_deg) * u[:, 4],
        ],
        axis=1,
    )


def read_synth_truth(path) -> dict[str, dict[str, Any]]:
    """``{image name: {"params": (tx, ty, sx, sy, theta), "strength": "none"|"mild"|"strong"}}`` from a
    phantom's ``synth_truth.csv`` (one row per box; the parameters repeat on every row of an image)."""
    path = Path(path)
    out: dict[str, dict[str, Any]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"Image Index", "strength", *PARAM_NAMES} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"{path}: not a synth_truth.csv (missing columns {', '.join(sorted(missing))})")
        for row in reader:
            name = row["Image Index"]
            if name not in out:
                try:
                    params = tuple(float(row[k]) for k in PARAM_NAMES)
                except ValueError:
                    raise InputError(f"{path}: bad parameters for {name}") from None
                out[name] = {"params": params, "strength": row["strength"] or "none"}
    return out


def measure_alignment(
    predict: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    truth=None,
    deformed=None,
    groups: dict[str, Any] | None = None,
    reference=None,
    position: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    warps: dict | None = None,
    batch_size: int = 64,
    k: int = 8,
    tol: float = 0.01,
) -> dict[str, Any]:
    """The alignment report of ``predict`` (``(B, 1, H, W)`` gray ``[0, 1]`` -> ``(B, 5)`` parameters) on
    ``images`` ``(N, 1, H, W)``.

    Args:
        truth: ``(N, 5)`` undo parameters (phantom) or None; ``deformed``: ``(N,)`` bool, which of them are
            deformed (default: those whose truth is not the identity); ``groups``: ``{name: (N,) bool}``
            subsets with their own truth summary (e.g. by deformation strength).
        reference: the frame ``R`` of the truth residual (the network's centre); identity when None.
        position: parameters -> bounded coordinates (``AlignmentNet.bound_position``), for the bound share.
        seed, warps: the random warps (:data:`DEFAULT_WARPS` by default, see :func:`random_warps`); image
            ``i`` is warped by warp ``i``, with zero padding (``cianet.models.alignment.warp``).
    Returns a JSON-able dict: ``warp`` (:func:`summarize` of :func:`warp_residual`), ``truth`` (deformed
    images, all images, and with the fitted reference), ``bounds`` (:func:`bound_share`) and the mean and
    std of the predicted parameters.
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (N, 1, H, W), got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    spec = {**DEFAULT_WARPS, **(warps or {})}
    a = random_warps(n, seed=seed, **spec)
    preds, preds_w = [], []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            x = images[i : i + batch_size]
            aw = torch.as_tensor(a[i : i + batch_size], dtype=x.dtype, device=x.device)
            preds.append(_as64(predict(x)))
            preds_w.append(_as64(predict(warp(x, aw))))
    pred, pred_w = np.concatenate(preds), np.concatenate(preds_w)
    size = (w, h)
    wr = warp_residual(pred, pred_w, a, size, k=k)
    report: dict[str, Any] = {
        "n_images": int(n),
        "image_size": [int(w), int(h)],
        "grid_points": k * k,
        "seed": seed,
        "warps": {**spec, "scale_range": list(spec["scale_range"])},
        "warp": summarize(wr["residual"], wr["baseline"], w),
        "params_mean": dict(zip(PARAM_NAMES, pred.mean(0).tolist())),
        "params_std": dict(zip(PARAM_NAMES, pred.std(0).tolist())),
    }
    if position is not None:
        pos = np.concatenate([_as64(position(torch.as_tensor(pred))), _as64(position(torch.as_tensor(pred_w)))])
        report["bounds"] = bound_share(pos, tol=tol)
        report["bounds"]["over"] = "predictions on the images and on their warped copies"
    if truth is not None:
        u = _as64(truth)
        if u.shape != (n, 5):
            raise ValueError(f"truth must be (N, 5) = ({n}, 5), got {u.shape}")
        identity = np.array([0, 0, 1, 1, 0.0])
        dmask = (np.abs(u - identity).max(1) > 1e-9) if deformed is None else np.asarray(deformed, bool)
        ref = np.array([0, 0, 1, 1, 0.0]) if reference is None else _as64(reference).reshape(5)
        tr = truth_residual(pred, u, ref, size, k=k)
        fitted = fit_reference(pred, u, size, k=k)
        tf = truth_residual(pred, u, fitted, size, k=k)
        report["truth"] = {
            "reference": ref.tolist(),
            "deformed": summarize(tr["residual"][dmask], tr["baseline"][dmask], w),
            "all": summarize(tr["residual"], tr["baseline"], w),
            "fitted_reference": fitted[:2].tolist(),
            "deformed_fitted": summarize(tf["residual"][dmask], tf["baseline"][dmask], w),
        }
        for name, mask in (groups or {}).items():
            m = np.asarray(mask, bool)
            report["truth"][name] = summarize(tr["residual"][m], tr["baseline"][m], w)
    return report

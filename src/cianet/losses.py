"""CIA-Net losses (paper section 3.2, equations 4-6), as pure functions on logits.

The class-wise head outputs logits ``z`` of shape ``(B, C, h, w)``; the cell probability is ``p = sigmoid(z)``.

* :func:`grid_bce_loss` (eq. 4): for an (image, class) with a box, the sum over cells of the binary
  cross-entropy against a 0/1 grid target (a cell is 1 iff it overlaps a box of that class).
* :func:`mil_loss` (eq. 5): for an (image, class) with only an image label ``y``, the multiple-instance loss
  ``-y log(1 - prod_j (1 - p_j)) - (1 - y) log(prod_j (1 - p_j))``, computed in log space.
* :func:`cianet_loss` (eq. 6): ``sum_i sum_k lambda_ik beta_B L_ik(B) + (1 - lambda_ik) L_ik(I)``.

Numerics of the MIL loss. With ``a_j = -log(1 - p_j) = softplus(z_j) >= 0`` and ``A = sum_j a_j``:
``prod_j (1 - p_j) = exp(-A)``, so the negative term is ``A`` (finite for any finite logits) and the positive
term is ``-log(1 - exp(-A))``, evaluated by the usual three regimes of ``log1mexp``:

* ``A > ln 2``: ``log1p(-exp(-A))``;
* ``1e-4 <= A <= ln 2``: ``log(-expm1(-A))``;
* ``A < 1e-4``: the series ``log A - A/2 + A^2/24`` with ``log A = logsumexp_j log a_j`` and
  ``log a_j = log softplus(z_j)`` itself evaluated by a series for very negative ``z``. This regime matters
  when every cell is confidently negative: in float32 ``softplus(z)`` underflows to 0 below ``z ~ -103`` and
  ``A`` would round to 0 (loss ``+inf``); in log space the loss stays finite and exact (about ``-logsumexp(z)``)
  for any finite logits, with finite gradients.

Each regime's input is clamped into its own domain before ``torch.where`` selects it, so the branches not
taken never produce ``inf``/``nan`` that would leak into the gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_BETA_B",
    "RESCALE_FLOOR",
    "box_to_grid",
    "build_grid_targets",
    "padded_grid_targets",
    "cell_log_complement",
    "log_prob_none",
    "log_prob_any",
    "grid_bce_loss",
    "mil_loss",
    "cianet_loss",
]

#: Default weight of the box (grid BCE) term in eq. 6. The paper does not give beta_B; Li et al. (CVPR 2018),
#: whose loss CIA-Net reuses, weight their box-annotated term by 5, which we follow.
DEFAULT_BETA_B = 5.0

#: Li et al.'s rescaling maps each cell's ``1 - p`` into ``[RESCALE_FLOOR, 1]`` in the MIL loss.
RESCALE_FLOOR = 0.98

_REDUCTIONS = ("mean", "sum", "none")
_SMALL_A = 1e-4  # below this total, use the series for log(1 - exp(-A))
_LOG_SMALL_A = math.log(_SMALL_A)
_SERIES_Z = -15.0  # below this logit, log softplus(z) by its series (softplus(z) ~ exp(z))


# ----------------------------------------------------------------------------------------------------------
# Grid targets
# ----------------------------------------------------------------------------------------------------------


def _pair(value: Sequence[float] | Sequence[int], what: str) -> tuple[float, float]:
    try:
        a, b = value  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a (width, height) pair, got {value!r}") from None
    if not (a > 0 and b > 0):
        raise ValueError(f"{what} must be positive, got {value!r}")
    return a, b


def _axis_overlap(lo: float, hi: float, extent: float, cells: int) -> torch.Tensor:
    """0/1 (cells,) mask of the cells along one axis whose interval overlaps ``[lo, hi)`` with positive length.

    Cell ``k`` covers ``[k * extent / cells, (k + 1) * extent / cells)``; the comparisons are cross-multiplied
    by ``cells`` so that a box edge exactly on a cell border (e.g. ``hi == k * extent / cells``) is decided
    without a division's rounding: it touches that cell with zero length and does not mark it.
    """
    k = torch.arange(cells, dtype=torch.float64)
    left = k * extent  # cell left edges, times `cells`
    right = (k + 1) * extent
    # Positive overlap length <=> both strict edge tests and a non-empty interval.
    return (left < hi * cells) & (right > lo * cells) & (hi > lo)


def box_to_grid(
    box_xywh: Sequence[float],
    image_size: Sequence[int] | Sequence[float],
    grid_size: Sequence[int],
) -> torch.Tensor:
    """Grid target of one box: cell ``(i, j)`` is 1 iff it overlaps the box with positive area.

    Args:
        box_xywh: ``(x, y, w, h)`` in the pixel frame of the image the grid covers (the network input).
        image_size: ``(W, H)`` of that image.
        grid_size: ``(grid_w, grid_h)``; cell ``(i, j)`` covers ``[j W/gw, (j+1) W/gw) x [i H/gh, (i+1) H/gh)``.

    Returns:
        float32 tensor ``(grid_h, grid_w)`` of 0/1. A box with zero width or height marks nothing; parts of
        a box outside the image are ignored.
    """
    width, height = _pair(image_size, "image_size")
    gw, gh = _pair(grid_size, "grid_size")
    if int(gw) != gw or int(gh) != gh:
        raise ValueError(f"grid_size must be integers, got {grid_size!r}")
    try:
        x, y, w, h = (float(v) for v in box_xywh)
    except (TypeError, ValueError):
        raise ValueError(f"box must be (x, y, w, h), got {box_xywh!r}") from None
    if w < 0 or h < 0 or not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"box must have finite coordinates and non-negative size, got {box_xywh!r}")
    cols = _axis_overlap(x, x + w, float(width), int(gw))  # (gw,)
    rows = _axis_overlap(y, y + h, float(height), int(gh))  # (gh,)
    return (rows[:, None] & cols[None, :]).to(torch.float32)


def padded_grid_targets(
    boxes: torch.Tensor,
    image_size: Sequence[float] | torch.Tensor,
    grid_size: Sequence[int],
    num_classes: int,
) -> torch.Tensor:
    """Grid targets of a padded batch of boxes, vectorized (the training loop's form of :func:`box_to_grid`).

    Args:
        boxes: ``(B, K, 5)`` rows ``(class_index, x, y, w, h)``; rows with class index < 0 are padding.
        image_size: ``(W, H)`` shared by the batch, or a ``(B, 2)`` tensor of per-image sizes.
        grid_size: ``(grid_w, grid_h)``.
        num_classes: C.

    Returns:
        ``(B, C, grid_h, grid_w)`` 0/1 in ``boxes``' dtype and device: a cell is 1 iff it overlaps a box of its
        class with positive area, with the same cross-multiplied border rule as :func:`_axis_overlap`.
    """
    if boxes.ndim != 3 or boxes.shape[-1] != 5:
        raise ValueError(f"boxes must be (B, K, 5), got shape {tuple(boxes.shape)}")
    gw, gh = (int(v) for v in _pair(grid_size, "grid_size"))
    b, k, _ = boxes.shape
    size = torch.as_tensor(image_size, dtype=boxes.dtype, device=boxes.device).reshape(-1, 2)  # (1 | B, 2)
    width, height = size[:, 0].view(-1, 1, 1), size[:, 1].view(-1, 1, 1)
    x0, y0 = boxes[..., 1:2], boxes[..., 2:3]  # (B, K, 1)
    x1, y1 = x0 + boxes[..., 3:4], y0 + boxes[..., 4:5]
    kx = torch.arange(gw, dtype=boxes.dtype, device=boxes.device)
    ky = torch.arange(gh, dtype=boxes.dtype, device=boxes.device)
    cols = (kx * width < x1 * gw) & ((kx + 1) * width > x0 * gw) & (x1 > x0)  # (B, K, gw)
    rows = (ky * height < y1 * gh) & ((ky + 1) * height > y0 * gh) & (y1 > y0)  # (B, K, gh)
    valid = boxes[..., 0] >= 0  # (B, K)
    hit = (rows[..., :, None] & cols[..., None, :] & valid[..., None, None]).to(boxes.dtype)  # (B, K, gh, gw)
    out = torch.zeros(b, num_classes, gh, gw, dtype=boxes.dtype, device=boxes.device)
    cls = boxes[..., 0].clamp(min=0).long()  # (B, K); padding rows add zeros to class 0
    return out.scatter_reduce_(1, cls[..., None, None].expand(b, k, gh, gw), hit, reduce="amax")


def build_grid_targets(
    boxes_per_image: Sequence[Sequence[Sequence[float]]],
    num_classes: int,
    image_size: Sequence[float] | Sequence[Sequence[float]],
    grid_size: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched grid targets and box masks from per-image box lists (validated, then :func:`padded_grid_targets`).

    Args:
        boxes_per_image: for each of the B images, a list of ``(class_index, x, y, w, h)`` in that image's
            network-input frame (already scaled / aligned). Several boxes of one class are united.
        num_classes: C.
        image_size: ``(W, H)`` shared by the batch, or one ``(W, H)`` per image.
        grid_size: ``(grid_w, grid_h)``.

    Returns:
        ``targets`` float32 ``(B, C, grid_h, grid_w)`` and ``box_mask`` float32 ``(B, C)`` (1 where the
        image has at least one box of that class: lambda in eq. 6).
    """
    batch = len(boxes_per_image)
    _pair(grid_size, "grid_size")
    sizes: list[Sequence[float]]
    if len(image_size) == 2 and not isinstance(image_size[0], (list, tuple)):
        sizes = [image_size] * batch  # type: ignore[list-item]
    else:
        sizes = list(image_size)  # type: ignore[arg-type]
        if len(sizes) != batch:
            raise ValueError(f"got {len(sizes)} image sizes for {batch} images")
    sizes = [_pair(sz, "image_size") for sz in sizes]
    kmax = max([len(boxes) for boxes in boxes_per_image], default=0)
    padded = torch.full((batch, max(kmax, 1), 5), -1.0, dtype=torch.float64)
    box_mask = torch.zeros(batch, num_classes, dtype=torch.float32)
    for b, boxes in enumerate(boxes_per_image):
        for j, entry in enumerate(boxes):
            if len(entry) != 5:
                raise ValueError(f"image {b}: box entries must be (class_index, x, y, w, h), got {entry!r}")
            cls = int(entry[0])
            if not 0 <= cls < num_classes:
                raise ValueError(f"image {b}: class index {cls} outside [0, {num_classes})")
            x, y, w, h = (float(v) for v in entry[1:])
            if w < 0 or h < 0 or not all(math.isfinite(v) for v in (x, y, w, h)):
                raise ValueError(f"image {b}: box must have finite coordinates and non-negative size, got {entry!r}")
            padded[b, j] = torch.tensor([cls, x, y, w, h], dtype=torch.float64)
            box_mask[b, cls] = 1.0
    size_t = torch.tensor(sizes, dtype=torch.float64).reshape(-1, 2) if batch else torch.zeros(0, 2)
    targets = padded_grid_targets(padded, size_t if batch else (1.0, 1.0), grid_size, num_classes)
    return targets.to(torch.float32), box_mask


# ----------------------------------------------------------------------------------------------------------
# Log-space building blocks
# ----------------------------------------------------------------------------------------------------------


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a (B, C, H, W) tensor, got {shape}")


def _log_over_small(u: torch.Tensor) -> torch.Tensor:
    """``log(-log1p(-u) / u)`` for small ``u >= 0`` by its series ``u/2 + 5 u^2 / 24`` (error O(u^3))."""
    return u * 0.5 + u * u * (5.0 / 24.0)


def cell_log_complement(logits: torch.Tensor, rescale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell ``a = -log(1 - p)`` and ``log a``, both finite for any finite logits.

    Without rescaling ``a = softplus(z)``. With Li et al.'s rescaling, ``1 - p`` becomes
    ``0.98 + 0.02 (1 - p) = 1 - 0.02 p`` and ``a = -log1p(-0.02 sigmoid(z))``.

    Returns ``(a, log_a)``, each shaped like ``logits``.
    """
    if not rescale:
        a = F.softplus(logits)
        # log softplus(z) = z + log(log1p(e)/e) with e = exp(z); series below _SERIES_Z, direct above.
        z_lo = logits.clamp(max=_SERIES_Z)
        e = torch.exp(z_lo)
        series = z_lo - e * 0.5 + e * e * (5.0 / 24.0)
        direct = torch.log(F.softplus(logits.clamp(min=_SERIES_Z)))
        log_a = torch.where(logits < _SERIES_Z, series, direct)
        return a, log_a
    scale = 1.0 - RESCALE_FLOOR
    u = scale * torch.sigmoid(logits)  # the rescaled p, in [0, 0.02]
    a = -torch.log1p(-u)
    log_u = math.log(scale) + F.logsigmoid(logits)  # exact log u even where u underflows
    small = u < _SMALL_A
    series = log_u + _log_over_small(u.clamp(max=_SMALL_A))
    direct = torch.log(a.clamp(min=torch.finfo(a.dtype).tiny))
    log_a = torch.where(small, series, direct)
    return a, log_a


def log_prob_none(logits: torch.Tensor, rescale: bool = False) -> torch.Tensor:
    """``log prod_j (1 - p_j)`` per (image, class): ``(B, C, H, W) -> (B, C)``, always finite (<= 0)."""
    _check_logits(logits)
    a, _ = cell_log_complement(logits, rescale)
    return -a.flatten(2).sum(-1)


def log_prob_any(logits: torch.Tensor, rescale: bool = False) -> torch.Tensor:
    """``log(1 - prod_j (1 - p_j))`` per (image, class): ``(B, C, H, W) -> (B, C)``, finite, with finite
    gradients, for any finite logits (see the module docstring for the three regimes)."""
    _check_logits(logits)
    a, log_a = cell_log_complement(logits, rescale)
    total = a.flatten(2).sum(-1)  # A, (B, C)
    log_total = torch.logsumexp(log_a.flatten(2), dim=-1)  # log A, exact even when A underflows
    # Regime 1: A < 1e-4 -> log(1 - e^-A) = log A - A/2 + A^2/24.
    lt = log_total.clamp(max=_LOG_SMALL_A)
    a_small = torch.exp(lt)
    r_small = lt - a_small * 0.5 + a_small * a_small / 24.0
    # Regime 2: 1e-4 <= A <= ln 2 -> log(-expm1(-A)).
    r_mid = torch.log(-torch.expm1(-total.clamp(min=_SMALL_A, max=math.log(2.0))))
    # Regime 3: A > ln 2 -> log1p(-exp(-A)).
    r_big = torch.log1p(-torch.exp(-total.clamp(min=math.log(2.0))))
    return torch.where(log_total < _LOG_SMALL_A, r_small, torch.where(total <= math.log(2.0), r_mid, r_big))


def _reduce(per_term: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_term
    if reduction == "sum":
        return per_term.sum()
    return per_term.mean()


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------


def grid_bce_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Equation 4: per (image, class), the SUM over cells of the binary cross-entropy.

    Args:
        logits: ``(B, C, H, W)``.
        targets: ``(B, C, H, W)`` in [0, 1] (0/1 grid targets from :func:`box_to_grid`).
        reduction: ``"none"`` -> ``(B, C)``; ``"sum"`` -> sum of all (B, C) terms; ``"mean"`` -> their mean
            (i.e. divided by ``B * C``; each term is still a sum over cells, as in the paper).
    """
    _check_logits(logits)
    _check_reduction(reduction)
    if targets.shape != logits.shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} != logits shape {tuple(logits.shape)}")
    per_cell = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return _reduce(per_cell.flatten(2).sum(-1), reduction)  # (B, C) before reduction


def mil_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean", rescale: bool = False
) -> torch.Tensor:
    """Equation 5: ``-y log(1 - prod_j (1 - p_j)) - (1 - y) log prod_j (1 - p_j)`` per (image, class).

    Args:
        logits: ``(B, C, H, W)``.
        labels: ``(B, C)`` image-level labels in [0, 1].
        reduction: ``"none"`` -> ``(B, C)``; ``"sum"``; ``"mean"`` over the ``B * C`` terms.
        rescale: Li et al.'s rescaling of each cell's ``1 - p`` into ``[0.98, 1]`` (keeps the image-level
            probability away from 0/1 on large grids; off by default, as the paper does not mention it).
    """
    _check_logits(logits)
    _check_reduction(reduction)
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels shape {tuple(labels.shape)} != (B, C) = {tuple(logits.shape[:2])}")
    y = labels.to(logits.dtype)
    per_term = -y * log_prob_any(logits, rescale) - (1.0 - y) * log_prob_none(logits, rescale)  # (B, C)
    return _reduce(per_term, reduction)


def cianet_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    grid_targets: torch.Tensor,
    box_mask: torch.Tensor,
    beta_b: float = DEFAULT_BETA_B,
    rescale: bool = False,
    reduction: str = "mean",
) -> dict[str, torch.Tensor] | torch.Tensor:
    """Equation 6: ``lambda beta_B L(B) + (1 - lambda) L(I)`` for every (image, class).

    Args:
        logits: ``(B, C, H, W)``.
        labels: ``(B, C)`` image-level labels (used where ``box_mask`` is 0).
        grid_targets: ``(B, C, H, W)`` grid targets (used where ``box_mask`` is 1; ignored elsewhere).
        box_mask: ``(B, C)`` 0/1, lambda: the class has a box in this image (box supervision).
        beta_b: weight of the box term (the paper leaves it open; default :data:`DEFAULT_BETA_B`).
        rescale: forwarded to :func:`mil_loss`.
        reduction: ``"none"`` returns the ``(B, C)`` tensor of weighted terms. ``"sum"`` returns
            ``{"loss", "box", "mil"}`` sums (``loss == box + mil``; ``box`` includes ``beta_b``).
            ``"mean"`` divides those sums by ``B * C``: a constant per batch size, so every (image, class)
            term keeps the same weight whatever the mix of box-annotated and image-level images in the batch
            (the paper's sum, scaled).
    """
    _check_logits(logits)
    _check_reduction(reduction)
    if box_mask.shape != logits.shape[:2]:
        raise ValueError(f"box_mask shape {tuple(box_mask.shape)} != (B, C) = {tuple(logits.shape[:2])}")
    box_terms = grid_bce_loss(logits, grid_targets, reduction="none")  # (B, C)
    mil_terms = mil_loss(logits, labels, reduction="none", rescale=rescale)  # (B, C)
    has_box = box_mask.to(torch.bool)
    # torch.where (not a product) so that the unused term of a pair can never leak into value or gradient.
    zero = logits.new_zeros(())
    box_part = torch.where(has_box, beta_b * box_terms, zero)
    mil_part = torch.where(has_box, zero, mil_terms)
    if reduction == "none":
        return box_part + mil_part
    box_sum, mil_sum = box_part.sum(), mil_part.sum()
    if reduction == "mean":
        n = float(box_mask.numel())
        box_sum, mil_sum = box_sum / n, mil_sum / n
    return {"loss": box_sum + mil_sum, "box": box_sum, "mil": mil_sum}

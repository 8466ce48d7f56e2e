"""Image-level scores from a model's cell logits, and the one way an image probability is shown.

The image score is ``1 - prod_j (1 - p_j)`` (eq. 5's image probability); AUCs rank images by its tie-free form,
the MIL evidence ``A = sum_j -log(1 - p_j)`` (:func:`image_evidence_from_logits`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def image_scores_from_logits(logits: Any, rescale: bool = False) -> Any:
    """Image-level probability ``1 - prod_j (1 - p_j)`` per (image, class).

    Args:
        logits: ``(N, C, H, W)`` torch tensor or numpy array of cell logits.
        rescale: apply Li et al.'s ``1 - p -> 0.98 + 0.02 (1 - p)`` (match the training loss's setting).

    Returns:
        ``(N, C)``, same kind (torch / numpy) as the input. Computed as ``-expm1(-sum_j a_j)`` with
        ``a_j = -log(1 - p_j)`` (softplus), so scores near 0 keep their relative precision (AUC ranks them).
    """
    # lazy: cianet.metrics reads numpy arrays without importing torch
    import torch

    from cianet.losses import log_prob_none

    is_numpy = not isinstance(logits, torch.Tensor)
    z = torch.as_tensor(np.asarray(logits)) if is_numpy else logits
    if z.dim() != 4:
        raise ValueError(f"logits must be (N, C, H, W), got shape {tuple(z.shape)}")
    if not z.is_floating_point() or z.dtype in (torch.float16, torch.bfloat16):
        z = z.to(torch.float32)  # half precision (e.g. autocast outputs) loses small scores
    scores = -torch.expm1(log_prob_none(z, rescale=rescale))  # (N, C)
    return scores.numpy() if is_numpy else scores


def image_evidence_from_logits(logits: Any, rescale: bool = False) -> np.ndarray:
    """The image's MIL evidence ``A = sum_j -log(1 - p_j)`` per (image, class), float64 numpy ``(N, C)``.

    The image score is ``1 - exp(-A)``, so A ranks images as the score does, but it does not saturate: in
    float32 the score is exactly 1.0 from ``A ~ 17`` on (a cell logit of ~17 suffices), where A still
    differs. With ``rescale`` (``loss.mil_rescale``) A is ``-log`` of the rescaled probability of no finding,
    the quantity the MIL loss trained. Computed in float64 from the logits; AUCs rank by it.
    """
    # lazy: cianet.metrics reads numpy arrays without importing torch
    import torch

    from cianet.losses import log_prob_none

    z = logits.detach().cpu() if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    if z.dim() != 4:
        raise ValueError(f"logits must be (N, C, H, W), got shape {tuple(z.shape)}")
    z = z.to(torch.float64)
    if rescale:  # each cell's term is bounded (<= -log 0.98): the loss's own form is exact
        return (-log_prob_none(z, rescale=True)).numpy()
    # softplus without torch's linear cut-off above z = 20, which drops log1p(e^-z) (~1e-9 a cell)
    cells = z.clamp(min=0) + torch.log1p(torch.exp(-z.abs()))
    return cells.flatten(2).sum(-1).numpy()


def format_probability(p: float | None, digits: int = 4) -> str:
    """A probability for people to read: ``digits`` decimals, ``"> 0.9999"`` / ``"< 0.0001"`` where those
    would round to 1 or 0 (a saturated score is not certainty), ``"0"`` for exactly 0, ``"n/a"`` for
    None/NaN. Every display of an image probability (viewer, overlays, reports) uses it."""
    if p is None or not math.isfinite(float(p)):
        return "n/a"
    p = float(p)
    text = f"{p:.{digits}f}"
    if float(text) >= 1.0:
        return f"> 0.{'9' * digits}"
    if p > 0 and float(text) == 0.0:
        return f"< 0.{'0' * (digits - 1)}1"
    return "0" if p <= 0 else text

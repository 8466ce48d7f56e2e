"""Batch composition: how box-supervised and image-level images share a training batch.

The paper is silent on it. With a plain shuffle the few box-supervised images are rare in a batch (NIH: 0.6-1.3%
of the training images carry boxes, about 0.05 per batch of 6), so most steps see no box loss at all and the
grid BCE of equation 4 trains in bursts. :func:`box_share_batches` guarantees every batch a fixed minimum
number of box-supervised images:

* ``k = max(round(share * B), round(natural * B))`` slots of each batch of ``B`` go to box-supervised images,
  where ``natural`` is their share of the training list (so a data set rich in boxes is never *under*-sampled);
  with ``share > 0`` and at least one box image, ``k >= 1``;
* the image-level images are shuffled and each is seen once per epoch, ``B - k`` per batch;
* the box slots are filled from a cycle over the box-supervised images, reshuffled at every pass, so a box
  image is repeated within an epoch only when the epoch needs more box slots than there are box images.

The order is a pure function of ``(seed, epoch)``: a resumed run sees the same batches. ``share = 0`` (or no
box image, or no image-level image) gives a plain shuffle into batches of ``B``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def box_slots(n_items: int, n_box: int, batch_size: int, share: float) -> int:
    """Box-supervised slots per batch (see the module docstring); 0 means a plain shuffle."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"box share must be in [0, 1], got {share}")
    if share == 0.0 or n_box == 0 or n_box >= n_items:
        return 0
    natural = n_box / n_items
    k = max(int(round(share * batch_size)), int(round(natural * batch_size)), 1)
    return min(k, batch_size - 1) if batch_size > 1 else 0


def box_share_batches(
    is_box: Sequence[bool], batch_size: int, share: float, seed: int, epoch: int, drop_last: bool = True
) -> list[list[int]]:
    """One epoch of batches (lists of item indices) with at least ``share`` box-supervised items each.

    Args:
        is_box: per training item, whether it is box-supervised.
        batch_size: ``B``.
        share: minimum share of each batch given to box-supervised items (0: plain shuffle).
        seed, epoch: the order is a pure function of both.
        drop_last: drop a last incomplete batch (as the training loader does when there is more than one
            batch).
    """
    is_box = np.asarray(is_box, dtype=bool)
    n = int(is_box.size)
    rng = np.random.default_rng([int(seed), int(epoch), 17])
    k = box_slots(n, int(is_box.sum()), batch_size, share)
    if k == 0:
        order = rng.permutation(n)
        batches = [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    else:
        box_idx, plain_idx = np.flatnonzero(is_box), np.flatnonzero(~is_box)
        plain = rng.permutation(plain_idx)
        per = batch_size - k
        n_batches = math.ceil(plain.size / per)
        cycle: list[int] = []
        while len(cycle) < n_batches * k:
            cycle.extend(rng.permutation(box_idx).tolist())
        batches = []
        for b in range(n_batches):
            part = plain[b * per : (b + 1) * per].tolist() + cycle[b * k : (b + 1) * k]
            batches.append([part[i] for i in rng.permutation(len(part))])
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches

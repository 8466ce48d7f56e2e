"""Batch composition (cianet.data.batches): the box share per batch, coverage, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from cianet.data.batches import box_share_batches, box_slots


def _flags(n: int, n_box: int, seed: int = 0) -> np.ndarray:
    flags = np.zeros(n, bool)
    flags[np.random.default_rng(seed).choice(n, n_box, replace=False)] = True
    return flags


def test_every_batch_gets_its_box_slots_and_every_plain_item_is_seen_once():
    flags = _flags(600, 12)
    batches = box_share_batches(flags, 6, share=1 / 6, seed=3, epoch=0, drop_last=False)
    plain_seen = [i for b in batches for i in b if not flags[i]]
    assert sorted(plain_seen) == np.flatnonzero(~flags).tolist()  # each image-level item exactly once
    for b in batches[:-1]:
        assert len(b) == 6 and sum(flags[i] for i in b) == 1
    # 118 batches need 118 box slots from 12 box items: each repeated ~10 times, evenly (a reshuffled cycle)
    counts = np.bincount([i for b in batches for i in b if flags[i]], minlength=600)[flags]
    assert counts.max() - counts.min() <= 1


def test_plain_shuffle_without_share_matches_natural_rate():
    flags = _flags(600, 12)
    batches = box_share_batches(flags, 6, share=0.0, seed=3, epoch=0, drop_last=False)
    assert sorted(i for b in batches for i in b) == list(range(600))
    assert np.mean([sum(flags[i] for i in b) for b in batches]) == pytest.approx(12 / 100)


def test_share_is_a_minimum_never_undersampling_a_box_rich_list():
    # natural share 0.5 > requested 0.1: half of each batch stays box-supervised
    assert box_slots(100, 50, 8, 0.1) == 4
    assert box_slots(100, 1, 8, 0.1) == 1  # at least one slot
    assert box_slots(100, 0, 8, 0.5) == 0 and box_slots(100, 100, 8, 0.5) == 0  # nothing to balance
    assert box_slots(100, 5, 1, 0.5) == 0  # a batch of one cannot be shared


def test_order_depends_only_on_seed_and_epoch():
    flags = _flags(200, 20)
    a = box_share_batches(flags, 8, 0.25, seed=1, epoch=2)
    assert a == box_share_batches(flags, 8, 0.25, seed=1, epoch=2)
    assert a != box_share_batches(flags, 8, 0.25, seed=1, epoch=3)
    assert all(len(b) == 8 and sum(flags[i] for i in b) == 2 for b in a)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_share_out_of_range_is_an_error(bad):
    with pytest.raises(ValueError, match="box share"):
        box_share_batches([True, False], 2, bad, 0, 0)

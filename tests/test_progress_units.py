"""Bars over chunked loops count images, not chunks (issue 21: "counting images, not batches")."""

from __future__ import annotations

import io
import re
import sys

import numpy as np
import torch
from torch import nn

from cianet.utils.progress import forced_progress


class FlatAttention(nn.Module):
    """Stands in for CIA-Net: an attention map of zeros on a 4 x 4 grid."""

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, 4, 4)
        return torch.zeros(x.shape[0], 4, 4)


def last_count(text: str) -> tuple[int, int]:
    counts = re.findall(r"(\d+)/(\d+) \[", text)  # tqdm's "n/total [elapsed..."
    assert counts, text
    return int(counts[-1][0]), int(counts[-1][1])


def test_attention_maps_bar_counts_images(monkeypatch):
    from cianet.inference.bundle import compute_attention_maps

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    images = np.zeros((10, 16, 16), np.float32)  # 10 images in chunks of 4: 3 chunks
    with forced_progress(True):
        maps = compute_attention_maps(FlatAttention(), images, batch_size=4, progress=True)
    assert maps.shape == (10, 4, 4)
    assert last_count(err.getvalue()) == (10, 10)
    assert "img" in err.getvalue()


def test_per_item_bars_say_images(monkeypatch):
    from cianet.utils.progress import progress_bar

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with forced_progress(True):
        assert list(progress_bar(range(7), desc="hash")) == list(range(7))
    assert last_count(err.getvalue()) == (7, 7)
    assert re.search(r"img/s|s/img", err.getvalue())

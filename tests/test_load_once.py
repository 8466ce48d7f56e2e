"""Loading work done once per process: an unchanged align.pt is read and built once (a changed or replaced one
again), and the non-finite weight check stays exact while it sums instead of testing every element."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from helpers import write_alignment


def _counting_reads(monkeypatch) -> list:
    from cianet.run import checkpoints

    reads, real = [], checkpoints.torch_read

    def counted(path, what, hint=""):
        reads.append(path)
        return real(path, what, hint)

    monkeypatch.setattr(checkpoints, "torch_read", counted)
    return reads


def _tx(loaded) -> float:
    with torch.no_grad():
        return float(loaded.net.predict_params(torch.zeros(1, 1, 64, 64))[0, 0])


@pytest.mark.slow  # builds and reads alignment checkpoints (about 1 s)
def test_an_unchanged_alignment_is_read_once_and_a_changed_one_again(tmp_path, monkeypatch):
    from cianet.run.checkpoints import load_alignment

    reads = _counting_reads(monkeypatch)
    (tmp_path / "run").mkdir()
    path = write_alignment(tmp_path / "run" / "align.pt", tx=0.2)
    first, again = load_alignment(path), load_alignment(tmp_path / "run")  # the file, then its folder
    assert len(reads) == 1 and again.net is first.net and again.path == path == first.path
    assert not first.net.training and not any(p.requires_grad for p in first.net.parameters())
    assert _tx(again) == pytest.approx(0.2, abs=1e-6)
    # what a caller gets beside the shared network is its own
    first.canonical[:] = -1
    first.net_kwargs["input_size"] = 0
    assert again.canonical.min() >= 0 and load_alignment(path).net_kwargs["input_size"] == 64
    assert len(reads) == 1

    write_alignment(path, tx=-0.1)  # rewritten in place: same inode and size, new change times
    changed = load_alignment(path)
    assert len(reads) == 2 and changed.net is not first.net and _tx(changed) == pytest.approx(-0.1, abs=1e-6)

    other = write_alignment(tmp_path / "other.pt", tx=0.3)
    os.replace(other, path)  # replaced by another file
    replaced = load_alignment(path)
    assert len(reads) == 3 and _tx(replaced) == pytest.approx(0.3, abs=1e-6)
    assert load_alignment(path).net is replaced.net and len(reads) == 3


def test_non_finite_weights_are_named_exactly_and_refused():
    from cianet.errors import InputError
    from cianet.run.networks import non_finite, with_weights

    big = torch.full((4,), 3e38)  # finite, yet its sum overflows: the exact test must clear it
    state = {"a": torch.ones(3), "b": big, "n": torch.tensor(7), "h": torch.ones(2, dtype=torch.float16)}
    assert non_finite(state) == []
    state.update(z=torch.tensor([1.0, float("inf")]), c=torch.tensor([float("nan")]), d=torch.tensor([-np.inf]))
    assert non_finite(state) == ["c", "d", "z"]
    assert non_finite({"h": torch.tensor([float("nan")], dtype=torch.bfloat16)}) == ["h"]

    weights = {"weight": torch.ones(2, 3), "bias": torch.tensor([0.0, float("nan")])}
    with pytest.raises(InputError, match=r"^x\.pt: non-finite \(NaN or infinite\) weights in bias$"):
        with_weights(lambda: nn.Linear(3, 2), weights, source="x.pt")
    weights["weight"][0, 0] = float("-inf")
    with pytest.raises(InputError, match=r"weights in bias and 1 more tensors$"):
        with_weights(lambda: nn.Linear(3, 2), weights, source="x.pt")
    weights = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
    assert torch.equal(with_weights(lambda: nn.Linear(3, 2), weights).weight, torch.ones(2, 3))

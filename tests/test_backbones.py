"""Backbones: input convention, trunk shapes, offline ImageNet weights handling."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from cianet.models import backbones
from cianet.models.backbones import (IMAGENET_MEAN, IMAGENET_STD, cached_weights_path, gray_to_input,
                                     load_pretrained_or_warn, resnet_trunk)
from cianet.models.cianet import CIANet


def test_gray_to_input_matches_formula():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 4, 5)
    y = gray_to_input(x)
    assert y.shape == (2, 3, 4, 5)
    for c in range(3):
        for b in range(2):
            expected = (x[b, 0].double() - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
            torch.testing.assert_close(y[b, c].double(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5\)"):
        gray_to_input(y)


@pytest.mark.parametrize("name,c4,c5", [("resnet18", 256, 512), ("resnet50", 1024, 2048)])
def test_trunk_shapes(name, c4, c5):
    x = torch.randn(1, 3, 64, 96)
    t4, ch4 = resnet_trunk(name, upto="c4")
    t5, ch5 = resnet_trunk(name, upto="c5")
    assert (ch4, ch5) == (c4, c5)
    with torch.no_grad():
        assert t4.eval()(x).shape == (1, c4, 4, 6)
        assert t5.eval()(x).shape == (1, c5, 2, 3)


def test_unknown_backbone_raises():
    with pytest.raises(ValueError, match="resnet7"):
        resnet_trunk("resnet7")


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub dir; any download attempt fails the test."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.delenv(backbones.ALLOW_DOWNLOAD_ENV, raising=False)

    def no_download(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path


def test_pretrained_offline_falls_back_with_one_message(empty_hub, caplog):
    caplog.set_level(logging.WARNING)
    model = CIANet(num_classes=2, backbone="resnet18", pretrained=True)  # two trunks, one message
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(msgs) == 1 and "resnet18" in msgs[0] and "random init" in msgs[0]
    assert "\n" not in msgs[0]
    out = model.eval()(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    assert out["logits"].shape == (1, 2, 2, 2)


def test_pretrained_read_from_local_cache(empty_hub, caplog):
    import torchvision.models as tvm

    torch.manual_seed(1)
    ref = tvm.resnet18(weights=None)
    path = cached_weights_path(tvm.ResNet18_Weights.IMAGENET1K_V1)
    os.makedirs(path.parent, exist_ok=True)
    torch.save(ref.state_dict(), path)
    caplog.set_level(logging.WARNING)
    sd = load_pretrained_or_warn("resnet18")
    assert sd is not None and not caplog.records
    trunk, _ = resnet_trunk("resnet18", pretrained=True)
    torch.testing.assert_close(trunk.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert not hasattr(trunk, "fc")

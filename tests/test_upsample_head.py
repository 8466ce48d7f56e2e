"""The factorized test-time head (upsample, then 3x3 conv) against slow float64 references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cianet.models.upsample_head import upsampled_conv3x3, upsampled_head


@pytest.mark.parametrize("h,w,size", [(4, 4, 16), (3, 5, 12), (2, 2, 7)])
def test_upsampled_conv3x3_equals_conv_of_upsampled_features(h: int, w: int, size: int) -> None:
    torch.manual_seed(0)
    f = torch.randn(2, 6, h, w, dtype=torch.float64)
    weight = torch.randn(5, 6, 3, 3, dtype=torch.float64)
    up = F.interpolate(f, size=(size, size), mode="bilinear", align_corners=False)  # (2, 6, U, U)
    # Slow reference: explicit zero padding and a python loop over the 9 taps.
    padded = F.pad(up, (1, 1, 1, 1))
    ref = torch.zeros(2, 5, size, size, dtype=torch.float64)
    for ky in range(3):
        for kx in range(3):
            ref += torch.einsum("oc,bcuv->bouv", weight[:, :, ky, kx], padded[:, :, ky : ky + size, kx : kx + size])
    got = upsampled_conv3x3(f, weight, size)
    assert got.shape == (2, 5, size, size)
    assert torch.allclose(got, ref, atol=1e-10, rtol=0)


def test_factorized_head_matches_model_test_head() -> None:
    from cianet.models.cianet import build_model

    torch.manual_seed(0)
    model = build_model("cianet", num_classes=14, backbone="resnet18", test_upsample=16, head_channels=8).double()
    with torch.no_grad():  # non-trivial BatchNorm statistics so that the eval-mode head is not the identity
        model.head.bn.running_mean.normal_()
        model.head.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    f_bar = torch.randn(2, 512, 2, 2, dtype=torch.float64)
    model.factorized_test_head = False
    ref = model._head(f_bar, True)  # (2, 14, 16, 16): literally upsample, then the head
    got = upsampled_head(model.head, f_bar, 16)
    assert torch.allclose(got, ref, atol=1e-10, rtol=0)
    model.factorized_test_head = True  # the default
    assert torch.allclose(model._head(f_bar, True), ref, atol=1e-10, rtol=0)
    assert model._head(f_bar, False).shape == (2, 14, 2, 2)  # native grid: the head alone


def test_upsampled_head_refuses_other_layouts() -> None:
    head = torch.nn.Module()
    head.conv = torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2)  # a bias is fine (a folded BatchNorm), dilation not
    with pytest.raises(ValueError, match="3x3 conv"):
        upsampled_head(head, torch.zeros(1, 4, 2, 2), 8)
    head.conv = torch.nn.Conv2d(4, 4, 5, padding=2)
    with pytest.raises(ValueError, match="3x3 conv"):
        upsampled_head(head, torch.zeros(1, 4, 2, 2), 8)

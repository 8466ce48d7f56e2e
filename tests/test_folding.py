"""BatchNorm folded into convolutions for inference (cianet.models.folding), against float64 references."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from helpers import tiny_config, tiny_model


def _randomize_bn(module: nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters far from the identity, so that a missed fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


@pytest.mark.parametrize("bias, groups, dilation", [(False, 1, 1), (True, 1, 2), (True, 2, 1)])
def test_folded_conv_is_bn_after_conv(bias, groups, dilation):
    from cianet.models.folding import fold_into_conv

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=dilation, dilation=dilation, groups=groups, bias=bias).double()
    bn = nn.BatchNorm2d(6).double().eval()
    _randomize_bn(bn)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        ref = bn(conv(x))
        # the affine map written out per channel, in loops: (x - mean) / sqrt(var + eps) * gamma + beta
        y = conv(x)
        loop = torch.empty_like(y)
        for c in range(6):
            loop[:, c] = (y[:, c] - bn.running_mean[c]) / torch.sqrt(bn.running_var[c] + bn.eps) * bn.weight[
                c
            ] + bn.bias[c]
        out = fold_into_conv(copy.deepcopy(conv), bn)(x)
    torch.testing.assert_close(ref, loop, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("backbone, expected", [("resnet18", 20), ("resnet50", 53)])
def test_resnet_trunk_folds_every_batchnorm_and_keeps_its_function(backbone, expected):
    from cianet.models.backbones import resnet_trunk
    from cianet.models.folding import fold_batchnorm

    torch.manual_seed(0)
    trunk, _ = resnet_trunk(backbone, upto="c5")
    trunk = trunk.double().eval()
    _randomize_bn(trunk)
    folded = copy.deepcopy(trunk)
    assert fold_batchnorm(folded) == expected  # stem + 2 or 3 per block + one per downsample branch
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), trunk(x), atol=1e-9, rtol=1e-9)


@pytest.mark.slow
def test_cianet_folded_channels_last_gives_the_same_outputs_and_head():
    """The whole model, test-time head included (factorized, with the folded head's bias), in float64."""
    from cianet.models.folding import for_inference

    cfg = tiny_config(None, model__kind="cianet")
    model = tiny_model(cfg).double().eval()
    _randomize_bn(model, seed=1)
    fast = for_inference(copy.deepcopy(model))
    assert fast.head.conv.bias is not None and isinstance(fast.head.bn, nn.Identity)
    pos, neg = torch.rand(2, 3, 64, 64, dtype=torch.float64), torch.rand(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        a = model(pos, neg, upsample=True)
        b = fast(pos.contiguous(memory_format=torch.channels_last), neg, upsample=True)
        # the literal computation: upsample F_bar, then the folded head
        model.factorized_test_head = False
        direct = model(pos, neg, upsample=True)["logits"]
    for key in ("logits", "m_pos", "m_neg", "delta"):
        torch.testing.assert_close(b[key], a[key], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(b["logits"], direct, atol=1e-9, rtol=1e-9)


def test_fold_refuses_a_model_in_training_mode():
    from cianet.models.folding import fold_batchnorm

    trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(trunk)
    trunk.eval()
    assert fold_batchnorm(trunk) == 1 and isinstance(trunk[1], nn.Identity)

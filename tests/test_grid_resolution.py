"""A grid that resolves findings on a CPU: dilated trunks (output_stride), the shallower CPU variant
(last_stage="c4"). The phantom's twins (the oracle negatives) are tested in test_synth.py."""

from __future__ import annotations

import pytest
import torch

from cianet.models.backbones import resnet_trunk, stage_stride
from cianet.models.cianet import build_model


@pytest.mark.slow
def test_dilated_resnet50_matches_torchvision_replace_stride_with_dilation():
    # lazy: importing torchvision imports torch._dynamo (about 3 s), paid at collection by every worker otherwise
    import torchvision.models as tvm

    torch.manual_seed(0)
    ref = tvm.resnet50(weights=None, replace_stride_with_dilation=[False, True, True]).eval()
    trunk, channels = resnet_trunk("resnet50", upto="c5", state_dict=ref.state_dict(), output_stride=8)
    trunk.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
        got = trunk(x)
    assert channels == 2048 and got.shape == (1, 2048, 8, 8)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_output_stride_32_is_the_plain_trunk(name):
    torch.manual_seed(0)
    a, _ = resnet_trunk(name, upto="c5")
    with torch.device("meta"):  # b's own random weights are replaced by a's: no need to draw them
        b, _ = resnet_trunk(name, upto="c5", state_dict=None, output_stride=32)
    b.load_state_dict(a.state_dict(), assign=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize(
    "upto,os_,side", [("c5", 32, 2), ("c5", 16, 4), ("c5", 8, 8), ("c4", 8, 8), ("c4", 16, 4), ("c3", 8, 8)]
)
@pytest.mark.slow
def test_resnet18_trunk_strides(upto, os_, side):
    trunk, _ = resnet_trunk("resnet18", upto=upto, output_stride=os_)
    with torch.no_grad():  # 64 px: grids of 2 to 8 cells, enough to tell the strides apart
        assert trunk(torch.zeros(1, 3, 64, 64)).shape[-1] == side == 64 // stage_stride(upto, os_)


@pytest.mark.slow
@pytest.mark.parametrize("last_stage,os_", [("c5", 32), ("c5", 16), ("c4", 8), ("c5", 8)])
def test_cianet_attention_lies_on_the_feature_grid(last_stage, os_):
    model = build_model(
        "cianet", backbone="resnet18", head_channels=16, output_stride=os_, last_stage=last_stage
    ).eval()
    x = torch.rand(2, 3, 64, 64)  # 64 px: grids of 2 to 8 cells, enough to tell the strides apart
    with torch.no_grad():
        out = model(x, x.flip(-1))
    side = 64 // os_
    assert out["logits"].shape == (2, 14, side, side)
    assert out["m_pos"].shape == out["delta"].shape == (2, side, side)
    # delta is normalized to mean 1 over the grid whatever its size (equation 3's h*w)
    torch.testing.assert_close(out["delta"].mean(dim=(-2, -1)), torch.ones(2))


def test_bad_grid_settings_are_errors():
    with pytest.raises(ValueError, match="output_stride"):
        resnet_trunk("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="upto"):
        resnet_trunk("resnet18", upto="c2")

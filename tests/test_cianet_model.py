"""CIA-Net and the baseline: shapes, attention normalization, m_neg reuse, gradients, test-time upsampling."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from cianet.models.cianet import Baseline, CIANet, build_model, normalize_delta


@pytest.fixture(scope="module")
def net18() -> CIANet:
    torch.manual_seed(0)
    return CIANet(num_classes=3, backbone="resnet18").eval()


@pytest.fixture(scope="module")
def nets14():
    """``nets14(backbone)``: a CIA-Net and a baseline of 14 classes in eval mode, built once per backbone
    (building draws every weight twice: most of these tests' time). Read-only: a test that changes one copies it."""
    built: dict[str, tuple[CIANet, Baseline]] = {}

    def get(backbone: str) -> tuple[CIANet, Baseline]:
        if backbone not in built:
            torch.manual_seed(0)
            built[backbone] = (
                CIANet(num_classes=14, backbone=backbone).eval(),
                Baseline(num_classes=14, backbone=backbone).eval(),
            )
        return built[backbone]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("backbone,size", [("resnet18", 64), ("resnet18", 128), ("resnet50", 64)])
def test_shapes(backbone, size, nets14):
    torch.manual_seed(0)
    h = size // 32
    pos, neg = torch.randn(2, 3, size, size), torch.randn(2, 3, size, size)
    model, baseline = nets14(backbone)
    with torch.no_grad():
        out = model(pos, neg, return_feats=True)
        base = baseline(pos, neg)
    assert out["logits"].shape == (2, 14, h, h)
    for k in ("m_pos", "m_neg", "delta"):
        assert out[k].shape == (2, h, h)
    c5 = 2048 if backbone == "resnet50" else 512
    assert out["feats"].shape == (2, c5, h, h)
    assert set(base) == {"logits"} and base["logits"].shape == (2, 14, h, h)


@pytest.mark.slow  # a float64 loop over every cell (about a second)
def test_delta_normalization_against_loop():
    torch.manual_seed(0)
    m_pos, m_neg = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    eps = 1e-3
    delta = normalize_delta(m_pos, m_neg, eps=eps)
    for b in range(3):
        cells = [abs(float(m_pos[b, i, j]) - float(m_neg[b, i, j])) + eps for i in range(4) for j in range(5)]
        total = math.fsum(cells)
        for k, (i, j) in enumerate((i, j) for i in range(4) for j in range(5)):
            assert float(delta[b, i, j]) == pytest.approx(20 * cells[k] / total, rel=1e-5)
    torch.testing.assert_close(delta.sum(dim=(1, 2)), torch.full((3,), 20.0))


@pytest.mark.slow
def test_forward_delta_is_the_normalized_contrast(net18):
    torch.manual_seed(1)
    pos, neg = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net18(pos, neg, return_feats=True)
        m_pos, m_neg = net18.attention_map(pos), net18.attention_map(neg)
    torch.testing.assert_close(out["m_pos"], m_pos, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["m_neg"], m_neg, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["delta"].sum(dim=(1, 2)), torch.full((2,), 4.0))
    torch.testing.assert_close(out["f_bar"], out["feats"] * out["delta"][:, None])


def test_m_neg_reuse_gives_same_logits(net18):
    torch.manual_seed(2)
    pos, neg = torch.randn(3, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        with_neg = net18(pos, neg.expand(3, -1, -1, -1).contiguous())
        bank = net18.attention_map(neg)  # (1, 2, 2): computed once, broadcast over the batch
        with_map = net18(pos, m_neg=bank)
        with_one = net18(pos, neg)  # a single negative image broadcasts too
    torch.testing.assert_close(with_map["logits"], with_neg["logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(with_one["logits"], with_neg["logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(with_map["delta"], with_neg["delta"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_baseline_equals_cianet_without_contrast(net18):
    """Sharing upper branch and head, CIA-Net with identical pos/neg (delta == 1) is the baseline."""
    torch.manual_seed(3)
    base = Baseline(num_classes=3, backbone="resnet18").eval()
    cia = copy.deepcopy(net18)  # its upper branch and head are replaced below: any CIA-Net of 3 classes will do
    missing, unexpected = cia.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("attn_trunk.", "attn_conv.")) for k in missing)
    pos = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = cia(pos, pos.clone())
        ref = base(pos)["logits"]
    torch.testing.assert_close(out["delta"], torch.ones(2, 2, 2))
    torch.testing.assert_close(out["logits"], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_gradients_reach_every_parameter(net18):
    torch.manual_seed(4)
    model = copy.deepcopy(net18).train()  # a copy: training mode and gradients stay out of the shared network
    pos, neg = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    out = model(pos, neg)
    target = torch.zeros_like(out["logits"])
    target[0, 1] = 1.0
    torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], target).backward()
    groups = {"upper.": 0, "attn_trunk.": 0, "attn_conv.": 0, "head.": 0}
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        groups[next(g for g in groups if name.startswith(g))] += 1
    assert all(n > 0 for n in groups.values()), groups


def test_prior_bias_and_logits_not_probabilities(net18):
    bias = net18.head.cls.bias
    torch.testing.assert_close(torch.sigmoid(bias), torch.full_like(bias, 0.01))
    with torch.no_grad():
        logits = net18(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64))["logits"]
    assert logits.max() < 0  # logits near log(0.01/0.99) ~ -4.6, i.e. not in [0, 1]
    zero = CIANet(num_classes=2, backbone="resnet18", prior_prob=None)
    assert torch.all(zero.head.cls.bias == 0)


@pytest.mark.slow
def test_test_time_upsampling(net18):
    torch.manual_seed(5)
    model = CIANet(num_classes=2, backbone="resnet18", test_upsample=16)
    pos, neg = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        up = model(pos, neg, return_feats=True)
        plain = model(pos, neg, upsample=False)
        ref = model.head(
            torch.nn.functional.interpolate(up["f_bar"], size=(16, 16), mode="bilinear", align_corners=False)
        )
    assert up["logits"].shape == (1, 2, 16, 16) and plain["logits"].shape == (1, 2, 2, 2)
    torch.testing.assert_close(up["logits"], ref)
    model.train()
    assert model(pos, neg)["logits"].shape == (1, 2, 2, 2)  # training never upsamples by default
    with pytest.raises(ValueError, match="test_upsample"):
        net18(pos, neg, upsample=True)  # built without test_upsample


def test_bad_inputs_raise_naming_the_problem(net18):
    with pytest.raises(ValueError, match=r"\(1, 3, 70, 70\)"):
        net18(torch.randn(1, 3, 70, 70), torch.randn(1, 3, 70, 70))
    with pytest.raises(ValueError, match="exactly one"):
        net18(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="m_neg shape"):
        net18(torch.randn(2, 3, 64, 64), m_neg=torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("resnet", num_classes=2)


@pytest.mark.slow
def test_build_model_channels_last_parity(net18):
    torch.manual_seed(6)
    ref = net18  # what build_model("cianet", ...) builds without channels_last; the parity is of its weights
    cl = build_model("cianet", num_classes=3, backbone="resnet18", channels_last=True).eval()
    cl.load_state_dict(ref.state_dict())
    assert cl.head.conv.weight.is_contiguous(memory_format=torch.channels_last)
    pos, neg = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = ref(pos, neg)["logits"]
        b = cl(pos.contiguous(memory_format=torch.channels_last), neg.contiguous(memory_format=torch.channels_last))[
            "logits"
        ]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert isinstance(build_model("baseline", num_classes=2, backbone="resnet18"), Baseline)

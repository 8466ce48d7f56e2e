"""Alignment module: affine convention, warp, AlignmentNet, box/mask transfer, structure loss."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from cianet.models.alignment import (
    AlignmentNet,
    StructureLoss,
    boxes_to_aligned,
    boxes_to_original,
    mask_to_original,
    params_to_matrix,
    warp,
)


def _matrix_ref(p):
    tx, ty, sx, sy, t = (float(v) for v in p)
    return [[sx * math.cos(t), -sy * math.sin(t), tx], [sx * math.sin(t), sy * math.cos(t), ty]]


def test_params_to_matrix_matches_equation_1():
    params = torch.tensor(
        [[0.1, -0.2, 1.1, 0.9, 0.3], [0.0, 0.0, 1.0, 1.0, 0.0], [-0.3, 0.25, 0.8, 1.3, -0.2]], dtype=torch.float64
    )
    got = params_to_matrix(params)
    assert got.shape == (3, 2, 3)
    for b in range(3):
        np.testing.assert_allclose(got[b].numpy(), _matrix_ref(params[b]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        params_to_matrix(torch.zeros(2, 4))


def test_warp_whole_pixel_shift():
    torch.manual_seed(0)
    img = torch.rand(1, 2, 6, 8, dtype=torch.float64)
    k = 3  # tx = 2k/W samples input column j + k for output column j
    out = warp(img, torch.tensor([[2 * k / 8, 0.0, 1.0, 1.0, 0.0]], dtype=torch.float64))
    ref = torch.zeros_like(img)
    for j in range(8):
        if j + k < 8:
            ref[..., j] = img[..., j + k]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


def _bilinear_ref(img: np.ndarray, params, out_hw) -> np.ndarray:
    """Loop reference of affine_grid + grid_sample(bilinear, zeros, align_corners=False), float64."""
    h, w = img.shape
    oh, ow = out_hw
    a = _matrix_ref(params)
    out = np.zeros(out_hw)
    for i in range(oh):
        for j in range(ow):
            px, py = 2 * (j + 0.5) / ow - 1, 2 * (i + 0.5) / oh - 1
            qx = a[0][0] * px + a[0][1] * py + a[0][2]
            qy = a[1][0] * px + a[1][1] * py + a[1][2]
            u, v = (qx + 1) * w / 2 - 0.5, (qy + 1) * h / 2 - 0.5  # continuous pixel index
            u0, v0 = math.floor(u), math.floor(v)
            val = 0.0
            for dv in (0, 1):
                for du in (0, 1):
                    x, y = u0 + du, v0 + dv
                    wt = (1 - abs(u - x)) * (1 - abs(v - y))
                    if 0 <= x < w and 0 <= y < h:
                        val += wt * img[y, x]
            out[i, j] = val
    return out


def test_warp_general_affine_against_loop():
    rng = np.random.default_rng(0)
    img = rng.random((7, 9))
    params = [0.1, -0.15, 1.2, 0.85, 0.3]
    got = warp(torch.from_numpy(img)[None, None], torch.tensor([params], dtype=torch.float64), out_size=(5, 6))
    np.testing.assert_allclose(got[0, 0].numpy(), _bilinear_ref(img, params, (5, 6)), atol=1e-9)


@pytest.fixture(scope="module")
def align_net() -> AlignmentNet:
    torch.manual_seed(0)
    return AlignmentNet(input_size=64).eval()


def test_alignment_net_is_identity_at_init(align_net):
    x = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        out = align_net(x)
        big = align_net(x, out_size=(48, 64))
    assert torch.equal(out["params"], torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]] * 2))
    torch.testing.assert_close(out["aligned"], x, rtol=0, atol=1e-4)
    assert big["aligned"].shape == (2, 1, 48, 64)


def test_alignment_params_are_bounded():
    net = AlignmentNet(input_size=64, max_shift=0.4, max_scale=1.4, max_rotation=0.35)
    p = net.bound(torch.tensor([[50.0, -50.0, 50.0, -50.0, 50.0], [0.0] * 5]))
    torch.testing.assert_close(p[0], torch.tensor([0.4, -0.4, 1.4, 1 / 1.4, 0.35]))
    torch.testing.assert_close(p[1], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0]))


def test_alignment_gradients_reach_every_parameter():
    torch.manual_seed(1)
    net = AlignmentNet(input_size=64).train()
    torch.nn.init.normal_(net.fc.weight, std=0.01)  # the zero init blocks the trunk's first gradient
    x = torch.rand(2, 1, 64, 64)
    out = net(x)
    ((out["aligned"] - x.flip(-1)) ** 2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_boxes_round_trip_without_rotation():
    boxes = np.array([[10.0, 20.0, 30.0, 15.0], [0.0, 0.0, 100.0, 80.0], [55.5, 3.25, 1.0, 2.0]])
    params = torch.tensor([0.12, -0.08, 0.9, 1.15, 0.0], dtype=torch.float64)
    aligned = boxes_to_aligned(boxes, params, src_size=(100, 80), dst_size=(64, 64))
    back = boxes_to_original(aligned, params, aligned_size=(64, 64), orig_size=(100, 80))
    np.testing.assert_allclose(back, boxes, atol=1e-9)
    # Hand check of the first box's left edge: q = 2*10/100 - 1 = -0.8; p = (q - tx)/sx; u' = (p + 1)*64/2.
    assert aligned[0, 0] == pytest.approx(((-0.8 - 0.12) / 0.9 + 1) * 32)
    t = boxes_to_aligned(torch.tensor(boxes, dtype=torch.float32), params, (100, 80), (64, 64))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32


def test_boxes_to_aligned_agrees_with_warp():
    """The warped image of a filled box occupies the mapped box (rotation 0, to within a pixel)."""
    img = torch.zeros(1, 1, 80, 100, dtype=torch.float64)
    img[..., 20:50, 30:70] = 1.0  # box x=30, y=20, w=40, h=30
    params = torch.tensor([[-0.1, 0.15, 0.8, 0.7, 0.0]], dtype=torch.float64)
    out = warp(img, params, out_size=(64, 96))[0, 0]
    ys, xs = torch.nonzero(out > 0.5, as_tuple=True)
    x, y, w, h = boxes_to_aligned(np.array([[30.0, 20.0, 40.0, 30.0]]), params[0], (100, 80), (96, 64))[0]
    assert abs(xs.min().item() - x) <= 1 and abs(xs.max().item() + 1 - (x + w)) <= 1
    assert abs(ys.min().item() - y) <= 1 and abs(ys.max().item() + 1 - (y + h)) <= 1


def test_mask_to_original_against_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((4, 5)) > 0.5
    params = [0.1, -0.05, 0.8, 1.1, 0.25]
    W, H = 23, 17
    got = mask_to_original(mask, torch.tensor(params), (W, H))
    a = _matrix_ref(params)
    m = np.array([[a[0][0], a[0][1]], [a[1][0], a[1][1]]])
    t = np.array([a[0][2], a[1][2]])
    ref = np.zeros((H, W), bool)
    for i in range(H):
        for j in range(W):
            q = np.array([2 * (j + 0.5) / W - 1, 2 * (i + 0.5) / H - 1])
            px, py = np.linalg.solve(m, q - t)  # aligned-frame point sampled at this pixel
            c, r = math.floor((px + 1) / 2 * 5), math.floor((py + 1) / 2 * 4)
            ref[i, j] = 0 <= r < 4 and 0 <= c < 5 and mask[r, c]
    assert got.dtype == bool and got.shape == (H, W)
    np.testing.assert_array_equal(got, ref)
    assert 0 < got.sum() < H * W
    probs = mask_to_original(torch.tensor(mask, dtype=torch.float32), params, (W, H))
    assert isinstance(probs, torch.Tensor) and probs.dtype == torch.float32
    assert torch.equal(probs > 0.5, torch.from_numpy(ref))


@pytest.fixture(scope="module")
def structure_loss() -> StructureLoss:
    return StructureLoss(feature_net="vgg16", pretrained=False, seed=0)


@pytest.mark.slow
def test_structure_loss_zero_for_identical_and_formula(structure_loss):
    torch.manual_seed(2)
    a, t = torch.rand(2, 1, 32, 32), torch.rand(1, 1, 32, 32)
    same = structure_loss(t.expand(2, -1, -1, -1), t)
    assert float(same["total"]) == 0.0
    got = structure_loss(a, t)
    with torch.no_grad():
        fa = structure_loss.features(
            torch.cat([a, a, a], 1)
            .sub(torch.tensor([0.485, 0.456, 0.406])[:, None, None])
            .div(torch.tensor([0.229, 0.224, 0.225])[:, None, None])
        )
        ft = structure_loss.features(
            torch.cat([t, t, t], 1)
            .sub(torch.tensor([0.485, 0.456, 0.406])[:, None, None])
            .div(torch.tensor([0.229, 0.224, 0.225])[:, None, None])
        )
    d = (fa - ft).double()
    chw = d[0].numel()
    assert fa.shape[1:] == (128, 16, 16)  # relu2_2
    feat_ref = sum(math.sqrt(float((d[b] ** 2).sum())) / chw for b in range(2)) / 2
    assert float(got["feat"]) == pytest.approx(feat_ref, rel=1e-4)
    assert float(got["pixel"]) == pytest.approx(float(((a - t) ** 2).mean()), rel=1e-5)
    assert float(got["total"]) == pytest.approx(float(got["feat"]) + float(got["pixel"]), rel=1e-5)
    # the fixture's loss, squared and without the pixel term: the same seeded VGG-16 features
    sq = copy.copy(structure_loss)
    sq.squared, sq.pixel_weight = True, 0.0
    sq = sq(a, t)
    assert float(sq["feat"]) == pytest.approx(sum(float((d[b] ** 2).sum()) / chw for b in range(2)) / 2, rel=1e-4)
    assert float(sq["total"]) == pytest.approx(float(sq["feat"]), rel=1e-6)
    none = StructureLoss(feature_net="none")(a, t)
    assert float(none["feat"]) == 0.0 and float(none["total"]) == pytest.approx(float(got["pixel"]))


@pytest.mark.slow  # imports torchvision.models (a second)
def test_vgg_features_are_torchvisions_first_two_blocks():
    """cianet builds VGG-16 only up to relu2_2: torchvision's layers, the same function of the same weights
    (taken from a whole VGG-16 state dict), and VGG's own initialization from a seed."""
    from torchvision.models.vgg import cfgs, make_layers

    from cianet.models.alignment import vgg16_relu2_2

    torch.manual_seed(0)
    features = make_layers(cfgs["D"])  # torchvision's vgg16().features
    whole = {f"features.{k}": v for k, v in features.state_dict().items()}
    whole["classifier.0.weight"] = torch.zeros(1)  # the rest of a whole VGG-16's state dict is left out
    theirs, ours = features[:9].eval(), vgg16_relu2_2(whole).eval()
    assert [repr(m) for m in ours] == [repr(m) for m in theirs]
    x = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x)) and ours(x).shape == (2, 128, 10, 12)
    # random: Kaiming normal (fan-out) weights, zero biases, the same for the same seed
    torch.manual_seed(5)
    a = vgg16_relu2_2(None)
    torch.manual_seed(5)
    b = vgg16_relu2_2(None)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    for conv in (m for m in a if isinstance(m, torch.nn.Conv2d)):
        fan_out = conv.out_channels * 9
        assert float(conv.weight.std()) == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
        assert not conv.bias.any()


@pytest.mark.slow
def test_structure_loss_trains_alignment_toward_target(structure_loss):
    """A few steps on a shifted image reduce the structure loss to the un-shifted target."""
    torch.manual_seed(3)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    target = torch.exp(-((xx + 0.35) ** 2 + yy**2) / 0.08) + torch.exp(-((xx - 0.35) ** 2 + yy**2) / 0.08)
    target = target[None, None] / target.max()
    shifted = warp(target, torch.tensor([[0.25, 0.0, 1.0, 1.0, 0.0]]))  # content moved left
    net = AlignmentNet(input_size=64).train()
    net.trunk.requires_grad_(False)  # regressing from fixed random features is enough here, and fast
    opt = torch.optim.Adam(net.fc.parameters(), lr=3e-4)
    losses = []
    for _ in range(8):
        loss = structure_loss(net(shifted)["aligned"], target)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():  # train mode: BatchNorm running statistics of 12 steps are not meaningful
        out = net(shifted)
        final = structure_loss(out["aligned"], target)["total"].item()
    assert final < 0.5 * losses[0], (losses, final)
    assert -0.4 < out["params"][0, 0].item() < -0.1  # tx moves toward -0.25, which undoes the shift

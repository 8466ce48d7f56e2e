"""cianet.losses against slow float64 / mpmath references written with loops over cells."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cianet.losses import (
    DEFAULT_BETA_B,
    box_to_grid,
    build_grid_targets,
    cianet_loss,
    grid_bce_loss,
    log_prob_any,
    mil_loss,
)

mpmath = pytest.importorskip("mpmath")
mpmath.mp.dps = 60


# ---------------------------------------------------------------------------------------------- references
def ref_box_to_grid(box, image_size, grid_size):
    """Brute force: overlap area of the box with each cell rectangle, in exact fractions."""
    from fractions import Fraction as Fr

    x, y, w, h = (Fr(v) for v in box)
    width, height = image_size
    gw, gh = grid_size
    out = np.zeros((gh, gw), dtype=np.float32)
    for i in range(gh):
        for j in range(gw):
            cx0, cx1 = Fr(j * width, gw), Fr((j + 1) * width, gw)
            cy0, cy1 = Fr(i * height, gh), Fr((i + 1) * height, gh)
            ox = min(cx1, x + w) - max(cx0, x)
            oy = min(cy1, y + h) - max(cy0, y)
            out[i, j] = 1.0 if ox > 0 and oy > 0 else 0.0
    return out


def ref_bce(z, y):
    """Per-cell BCE, float64 loops (math.log of the sigmoid)."""
    total = 0.0
    for zj, yj in zip(z, y):
        p = 1.0 / (1.0 + math.exp(-zj))
        total += -yj * math.log(p) - (1 - yj) * math.log(1 - p)
    return total


def ref_mil_mp(z, y, rescale=False):
    """Equation 5 literally (direct product), in 60-digit arithmetic: exact even for logits +-50 on 128x128."""
    prod = mpmath.mpf(1)
    for zj in z:
        p = 1 / (1 + mpmath.exp(-mpmath.mpf(zj)))
        one_minus = 1 - p
        if rescale:
            one_minus = mpmath.mpf("0.98") + mpmath.mpf("0.02") * one_minus
        prod *= one_minus
    val = -y * mpmath.log1p(-prod) - (1 - y) * mpmath.log(prod)
    return float(val)


def ref_mil_float(z, y):
    """Equation 5 literally in float64 (direct product, math.log); inf/nan where it under/overflows."""
    prod = 1.0
    for zj in z:
        prod *= 1.0 - 1.0 / (1.0 + math.exp(-zj))
    with np.errstate(divide="ignore"):
        pos = -math.log(1 - prod) if prod < 1 else math.inf
        neg = -math.log(prod) if prod > 0 else math.inf
    return y * pos + (1 - y) * neg


# ---------------------------------------------------------------------------------------------- box_to_grid
@pytest.mark.parametrize(
    "box,image_size,grid_size",
    [
        ((10.0, 20.0, 30.0, 40.0), (128, 128), (16, 16)),
        ((16.0, 32.0, 16.0, 8.0), (128, 128), (16, 16)),  # every edge exactly on a cell border
        ((0.0, 0.0, 128.0, 128.0), (128, 128), (16, 16)),  # whole image
        ((15.875, 7.5, 0.25, 0.125), (128, 128), (16, 16)),  # tiny box straddling a border
        ((30.0, 10.0, 50.0, 70.0), (120, 90), (7, 5)),  # non-square image and grid, non-integer cells
        ((100.0, 60.0, 40.0, 40.0), (120, 90), (4, 3)),  # partly outside the image
        ((40.0, 30.0, 0.0, 10.0), (120, 90), (4, 3)),  # zero width: no positive area
    ],
)
def test_box_to_grid_matches_brute_force(box, image_size, grid_size):
    got = box_to_grid(box, image_size, grid_size).numpy()
    assert got.shape == (grid_size[1], grid_size[0])
    np.testing.assert_array_equal(got, ref_box_to_grid(box, image_size, grid_size))


def test_box_to_grid_border_edges_exclusive():
    # Box [16, 32) x [16, 32) on 8-px cells of a 128 image: exactly cells 2..3 in each axis, not 1 or 4.
    g = box_to_grid((16, 16, 16, 16), (128, 128), (16, 16)).numpy()
    rows, cols = np.nonzero(g)
    assert set(rows) == {2, 3} and set(cols) == {2, 3}


def test_box_to_grid_random_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(60):
        W, H = int(rng.integers(20, 200)), int(rng.integers(20, 200))
        gw, gh = int(rng.integers(1, 20)), int(rng.integers(1, 20))
        # Coordinates on a 1/8 lattice, often landing on cell borders.
        x, y = rng.integers(0, 8 * W) / 8, rng.integers(0, 8 * H) / 8
        w, h = rng.integers(0, 8 * W) / 8, rng.integers(0, 8 * H) / 8
        got = box_to_grid((x, y, w, h), (W, H), (gw, gh)).numpy()
        np.testing.assert_array_equal(got, ref_box_to_grid((x, y, w, h), (W, H), (gw, gh)))


def test_build_grid_targets_unites_boxes_and_sets_mask():
    boxes = [[(2, 0, 0, 16, 16), (2, 64, 64, 16, 16), (5, 0, 0, 128, 8)], []]
    targets, mask = build_grid_targets(boxes, num_classes=8, image_size=(128, 128), grid_size=(8, 8))
    assert targets.shape == (2, 8, 8, 8) and mask.shape == (2, 8)
    expected = np.maximum(
        ref_box_to_grid((0, 0, 16, 16), (128, 128), (8, 8)), ref_box_to_grid((64, 64, 16, 16), (128, 128), (8, 8))
    )
    np.testing.assert_array_equal(targets[0, 2].numpy(), expected)
    np.testing.assert_array_equal(targets[0, 5].numpy(), ref_box_to_grid((0, 0, 128, 8), (128, 128), (8, 8)))
    assert mask[0].tolist() == [0, 0, 1, 0, 0, 1, 0, 0]
    assert mask[1].sum() == 0 and targets[1].sum() == 0
    with pytest.raises(ValueError, match="class index"):
        build_grid_targets([[(9, 0, 0, 1, 1)]], 8, (128, 128), (8, 8))


# ---------------------------------------------------------------------------------------------- grid BCE
def test_grid_bce_matches_loop_reference():
    torch.manual_seed(0)
    z = torch.randn(2, 3, 4, 5, dtype=torch.float64) * 3
    y = (torch.rand(2, 3, 4, 5) > 0.6).double()
    per = grid_bce_loss(z, y, reduction="none")
    assert per.shape == (2, 3)
    for b in range(2):
        for c in range(3):
            ref = ref_bce(z[b, c].flatten().tolist(), y[b, c].flatten().tolist())
            assert per[b, c].item() == pytest.approx(ref, rel=1e-12)
    assert grid_bce_loss(z, y, reduction="sum").item() == pytest.approx(per.sum().item(), rel=1e-12)
    assert grid_bce_loss(z, y, reduction="mean").item() == pytest.approx(per.sum().item() / 6, rel=1e-12)


def test_grid_bce_extreme_logits_finite():
    z = torch.full((1, 1, 16, 16), 50.0, requires_grad=True)
    y = torch.zeros(1, 1, 16, 16)
    loss = grid_bce_loss(z, y, reduction="sum")
    loss.backward()
    assert loss.item() == pytest.approx(256 * 50.0, rel=1e-6)
    assert torch.isfinite(z.grad).all()


# ---------------------------------------------------------------------------------------------- MIL
def test_mil_matches_float64_loop_reference_on_moderate_logits():
    torch.manual_seed(1)
    z = torch.randn(3, 4, 3, 3, dtype=torch.float64) * 2 - 1
    y = (torch.rand(3, 4) > 0.5).double()
    per = mil_loss(z, y, reduction="none")
    for b in range(3):
        for c in range(4):
            ref = ref_mil_float(z[b, c].flatten().tolist(), y[b, c].item())
            assert per[b, c].item() == pytest.approx(ref, rel=1e-10)
    assert mil_loss(z, y).item() == pytest.approx(per.mean().item(), rel=1e-12)


@pytest.mark.parametrize("n", [16, 128])
@pytest.mark.parametrize("value", [-50.0, -12.0, -4.0, 0.0, 3.0, 50.0])
@pytest.mark.parametrize("label", [0.0, 1.0])
def test_mil_extreme_constant_logits_match_mpmath(n, value, label):
    """Constant grids: the mpmath reference of a product of n*n equal factors is a power (fast to evaluate)."""
    z = torch.full((1, 1, n, n), value, dtype=torch.float64)
    got = mil_loss(z, torch.tensor([[label]], dtype=torch.float64), reduction="sum").item()
    p = 1 / (1 + mpmath.exp(-mpmath.mpf(value)))
    prod = (1 - p) ** (n * n)
    ref = float(-label * mpmath.log1p(-prod) - (1 - label) * mpmath.log(prod))
    assert math.isfinite(got)
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_mil_mixed_extreme_logits_match_mpmath_and_have_finite_gradients():
    torch.manual_seed(2)
    z = torch.rand(2, 2, 16, 16, dtype=torch.float64) * 100 - 50
    z[1, 0] = -50 + torch.rand(16, 16, dtype=torch.float64)  # almost surely negative everywhere
    z[1, 1, 0, 0] = 50.0
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    per = mil_loss(z, y, reduction="none")
    for b in range(2):
        for c in range(2):
            ref = ref_mil_mp(z[b, c].flatten().tolist(), y[b, c].item())
            assert per[b, c].item() == pytest.approx(ref, rel=1e-9)
    for dtype in (torch.float32, torch.float64):
        zz = z.to(dtype).requires_grad_(True)
        loss = mil_loss(zz, y.to(dtype), reduction="sum")
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(zz.grad).all()


@pytest.mark.parametrize("value", [-50.0, -120.0, -1000.0])
def test_mil_positive_term_finite_in_float32_when_softplus_underflows(value):
    """At z = -120 float32 softplus underflows to 0; the log-space path still gives the exact loss."""
    z = torch.full((1, 1, 128, 128), value, dtype=torch.float32, requires_grad=True)
    loss = mil_loss(z, torch.ones(1, 1), reduction="sum")
    loss.backward()
    # -log(1 - (1 - sigmoid(z))^N) ~ -log(N e^z) = -z - log N for very negative z.
    expected = -value - math.log(128 * 128)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(z.grad).all()
    # d loss / d z_j -> -1/N for each cell.
    assert z.grad.mean().item() == pytest.approx(-1 / (128 * 128), rel=1e-4)


def test_mil_gradient_matches_float64_finite_differences():
    torch.manual_seed(3)
    z = (torch.randn(1, 2, 4, 4, dtype=torch.float64) * 4 - 3).requires_grad_(True)
    y = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: mil_loss(t, y, reduction="sum"), (z,))
    assert torch.autograd.gradcheck(lambda t: mil_loss(t, y, reduction="sum", rescale=True), (z,))


def test_log_prob_any_regimes_are_continuous():
    """Around the regime switches (A = 1e-4 and A = ln 2) the value matches mpmath on both sides."""
    n = 4
    for target_a in (1e-4 * 0.999, 1e-4 * 1.001, math.log(2) * 0.999, math.log(2) * 1.001):
        # softplus(z) = target_a / n per cell -> z = log(expm1(target_a / n))
        zval = math.log(math.expm1(target_a / n))
        z = torch.full((1, 1, 2, 2), zval, dtype=torch.float64)
        got = log_prob_any(z).item()
        ref = float(mpmath.log(1 - mpmath.exp(-n * mpmath.log1p(mpmath.exp(zval)))))
        assert got == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("value", [-50.0, -3.0, 0.0, 4.0, 50.0])
def test_mil_rescale_matches_mpmath(value):
    torch.manual_seed(4)
    z = torch.full((1, 2, 16, 16), value, dtype=torch.float64) + torch.rand(1, 2, 16, 16, dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    per = mil_loss(z, y, reduction="none", rescale=True)
    for c in range(2):
        ref = ref_mil_mp(z[0, c].flatten().tolist(), y[0, c].item(), rescale=True)
        assert per[0, c].item() == pytest.approx(ref, rel=1e-9)
    # The rescaled cell complement is >= 0.98, so the negative term is at most N * -log(0.98).
    assert per[0, 1].item() <= 256 * -math.log(0.98) + 1e-9


# ---------------------------------------------------------------------------------------------- total loss
def _batch(seed=5):
    torch.manual_seed(seed)
    logits = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    labels = (torch.rand(3, 4) > 0.5).double()
    targets = (torch.rand(3, 4, 4, 4) > 0.7).double()
    box_mask = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.float64)
    labels = torch.maximum(labels, box_mask)  # a class with a box is present
    return logits, labels, targets, box_mask


def test_cianet_loss_equation_6_reference():
    logits, labels, targets, box_mask = _batch()
    beta = 3.5
    out = cianet_loss(logits, labels, targets, box_mask, beta_b=beta, reduction="sum")
    box_ref = mil_ref = 0.0
    for b in range(3):
        for k in range(4):
            z = logits[b, k].flatten().tolist()
            if box_mask[b, k]:
                box_ref += beta * ref_bce(z, targets[b, k].flatten().tolist())
            else:
                mil_ref += ref_mil_float(z, labels[b, k].item())
    assert out["box"].item() == pytest.approx(box_ref, rel=1e-10)
    assert out["mil"].item() == pytest.approx(mil_ref, rel=1e-10)
    assert out["loss"].item() == pytest.approx(box_ref + mil_ref, rel=1e-10)
    mean = cianet_loss(logits, labels, targets, box_mask, beta_b=beta, reduction="mean")
    assert mean["loss"].item() == pytest.approx((box_ref + mil_ref) / 12, rel=1e-10)
    none = cianet_loss(logits, labels, targets, box_mask, beta_b=beta, reduction="none")
    assert none.shape == (3, 4) and none.sum().item() == pytest.approx(box_ref + mil_ref, rel=1e-10)


def test_cianet_loss_ignores_grid_targets_without_box():
    logits, labels, targets, box_mask = _batch()
    logits.requires_grad_(True)
    base = cianet_loss(logits, labels, targets, box_mask)["loss"]
    (g_base,) = torch.autograd.grad(base, logits)
    changed = targets.clone()
    changed[1] = 1 - changed[1]  # image 1 has no box at all
    changed[0, 1] = 1 - changed[0, 1]  # image 0, class 1 has no box
    other = cianet_loss(logits, labels, changed, box_mask)["loss"]
    (g_other,) = torch.autograd.grad(other, logits)
    assert other.item() == base.item()
    assert torch.equal(g_base, g_other)
    # ...while changing a boxed class's target does change it.
    changed[0, 0] = 1 - changed[0, 0]
    assert cianet_loss(logits, labels, changed, box_mask)["loss"].item() != base.item()


def test_cianet_loss_ignores_labels_of_boxed_classes_and_default_beta():
    logits, labels, targets, box_mask = _batch()
    flipped = labels.clone()
    flipped[0, 0] = 0.0  # boxed: the MIL term is not used
    a = cianet_loss(logits, labels, targets, box_mask)
    b = cianet_loss(logits, flipped, targets, box_mask)
    assert a["loss"].item() == b["loss"].item()
    c = cianet_loss(logits, labels, targets, box_mask, beta_b=1.0)
    assert a["box"].item() == pytest.approx(DEFAULT_BETA_B * c["box"].item(), rel=1e-12)


def test_cianet_loss_finite_gradients_at_extremes():
    z = torch.cat([torch.full((1, 2, 16, 16), 50.0), torch.full((1, 2, 16, 16), -50.0)]).requires_grad_(True)
    labels = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    targets = torch.zeros(2, 2, 16, 16)
    targets[0, 1, :4, :4] = 1
    box_mask = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    out = cianet_loss(z, labels, targets, box_mask)
    out["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values())
    assert torch.isfinite(z.grad).all()


def test_bad_arguments_raise():
    z = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match="reduction"):
        mil_loss(z, torch.zeros(1, 2), reduction="avg")
    with pytest.raises(ValueError, match="labels shape"):
        mil_loss(z, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="targets shape"):
        grid_bce_loss(z, torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="B, C, H, W"):
        mil_loss(torch.zeros(2, 3), torch.zeros(2, 3))


def test_padded_grid_targets_match_box_to_grid_reference():
    """The vectorized batch form agrees with the one-box reference, borders and per-image sizes included."""
    from cianet.losses import padded_grid_targets

    rng = np.random.default_rng(0)
    sizes = [(64.0, 64.0), (100.0, 70.0), (37.0, 53.0)]
    boxes = torch.full((3, 4, 5), -1.0, dtype=torch.float64)
    for b, (w_img, h_img) in enumerate(sizes):
        for k in range(b + 1):
            x, y = rng.uniform(-5, w_img - 5), rng.uniform(-5, h_img - 5)
            boxes[b, k] = torch.tensor([rng.integers(0, 14), x, y, *rng.uniform(0, 30, 2)])
    boxes[0, 0] = torch.tensor([3, 16.0, 16.0, 16.0, 16.0])  # edges exactly on cell borders
    boxes[2, 1] = torch.tensor([5, 10.0, 10.0, 0.0, 8.0])  # zero width: marks nothing
    got = padded_grid_targets(boxes, torch.tensor(sizes, dtype=torch.float64), (8, 7), 14)
    want = torch.zeros_like(got)
    for b in range(3):
        for row in boxes[b]:
            if row[0] >= 0:
                cls = int(row[0])
                ref = box_to_grid(row[1:].tolist(), sizes[b], (8, 7)).double()
                want[b, cls] = torch.maximum(want[b, cls], ref)
    assert torch.equal(got, want)
    assert got[0, 3].sum() == 3 * 2  # y 16..32 meets rows 1-3 of 7 (64/7 px each); x 16..32 exactly cols 2, 3 of 8

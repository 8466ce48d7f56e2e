"""Alignment measurement (cianet.evaluation.alignment_measures) and the alignment core added for it: crop-centred
bounds, bound positions, random warps, the consistency loss, the balanced structure loss.

References are float64 loops over points with the matrix of equation 1 written out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cianet.evaluation import alignment_measures as ae
from cianet.models.alignment import (
    AlignmentNet,
    StructureLoss,
    consistency_loss,
    crop_params,
    derive_bounds,
    random_warp_params,
    warp,
)


def _mat(p) -> np.ndarray:
    tx, ty, sx, sy, t = (float(v) for v in p)
    return np.array([[sx * math.cos(t), -sy * math.sin(t), tx], [sx * math.sin(t), sy * math.cos(t), ty], [0, 0, 1.0]])


def _params_of_similarity(m: np.ndarray) -> list[float]:
    """(tx, ty, s, s, theta) of a 3x3 similarity matrix (rotation times isotropic scale)."""
    s = math.hypot(m[0, 0], m[1, 0])
    return [m[0, 2], m[1, 2], s, s, math.atan2(m[1, 0], m[0, 0])]


def _points(k):
    return [((j + 0.5) * 2 / k - 1, (i + 0.5) * 2 / k - 1) for i in range(k) for j in range(k)]


def _map(m, x, y):
    return m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]


def _px(a, b, w, h):
    return math.hypot((a[0] - b[0]) * w / 2, (a[1] - b[1]) * h / 2)


def _similarities(n, seed):
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.7, 1.3, n)
    return np.stack([rng.uniform(-0.3, 0.3, n), rng.uniform(-0.3, 0.3, n), s, s, rng.uniform(-0.4, 0.4, n)], 1)


# --------------------------------------------------------------------------------------- crop and bounds
def test_crop_params_sample_the_crop_edges():
    crop, w, h = (17, 24, 237, 187), 256, 200
    tx, ty, sx, sy, th = crop_params(crop, (w, h))
    assert th == 0.0
    for p, edge in ((-1.0, crop[0]), (1.0, crop[2])):  # output edge p samples the crop's pixel edge
        assert ((sx * p + tx) + 1) * w / 2 == pytest.approx(edge)
    for p, edge in ((-1.0, crop[1]), (1.0, crop[3])):
        assert ((sy * p + ty) + 1) * h / 2 == pytest.approx(edge)
    img = torch.zeros(1, 1, h, w, dtype=torch.float64)
    img[..., 24:187, 17:237] = 1.0
    out = warp(img, torch.tensor([[tx, ty, sx, sy, th]], dtype=torch.float64), out_size=(64, 64))
    assert float(out.min()) > 0.99  # the whole output lies inside the crop
    with pytest.raises(ValueError):
        crop_params((10, 10, 5, 20), 64)


def test_derive_bounds_centre_and_cover_the_crop():
    cp = crop_params((65, 64, 439, 354), 512)  # the NIH sample's crop: sy about 0.57
    assert cp[3] == pytest.approx(290 / 512)
    b = derive_bounds(cp, center="crop", max_shift=0.4, max_scale=1.4, max_rotation=0.35)
    assert b == {"center": list(cp), "max_shift": 0.4, "max_scale": 1.4, "max_rotation": 0.35}
    ident = derive_bounds(cp, center="identity", max_shift=0.4, max_scale=1.4, max_rotation=0.35)
    assert ident["center"] == [0, 0, 1, 1, 0]
    net = AlignmentNet(input_size=32, **ident)
    # the crop and the crop zoomed by the configured margin in either direction lie inside the bounds
    for f in (1 / 1.4, 1.0, 1.4):
        p = torch.tensor([[cp[0], cp[1], cp[2] * f, cp[3] * f, 0.0]], dtype=torch.float64)
        assert float(net.bound_position(p).abs().max()) <= 1.0 + 1e-12
    assert ident["max_scale"] == pytest.approx(1.4 * 512 / 290)
    assert derive_bounds(None, center="crop") == derive_bounds(None, center="identity")
    with pytest.raises(ValueError):
        derive_bounds(cp, center="middle")


@pytest.mark.slow
def test_centred_net_starts_at_the_centre_and_bounds_invert():
    cp = crop_params((8, 12, 119, 94), 128)
    net = AlignmentNet(input_size=32, **derive_bounds(cp, max_shift=0.3, max_scale=1.5, max_rotation=0.2)).eval()
    with torch.no_grad():
        out = net(torch.rand(3, 1, 48, 48))
    torch.testing.assert_close(out["params"], torch.tensor([cp] * 3, dtype=torch.float32))
    z = torch.tensor([[50.0, -50.0, 50.0, -50.0, 50.0], [0.3, -1.2, 0.7, 2.0, -0.4]], dtype=torch.float64)
    p = net.bound(z)
    ref0 = [cp[0] + 0.3, cp[1] - 0.3, cp[2] * 1.5, cp[3] / 1.5, 0.2]
    np.testing.assert_allclose(p[0].numpy(), ref0, rtol=1e-12)
    np.testing.assert_allclose(net.bound_position(p).numpy(), np.tanh(z.numpy()), atol=1e-12)
    assert net.bounds() == {"center": list(cp), "max_shift": 0.3, "max_scale": 1.5, "max_rotation": 0.2}
    # a net rebuilt from its bounds (as from align.pt) gives the same outputs
    twin = AlignmentNet(input_size=32, **net.bounds())
    twin.load_state_dict(net.state_dict())
    torch.testing.assert_close(twin.bound(z), p)


# ---------------------------------------------------------------------------------- warps, consistency
def test_random_warp_params_ranges():
    g = torch.Generator().manual_seed(0)
    w = random_warp_params(2000, g, max_rotation=0.2, scale_range=(0.8, 1.25), max_shift=0.1, dtype=torch.float64)
    assert w.shape == (2000, 5)
    assert float(w[:, :2].abs().max()) <= 0.1 and float(w[:, :2].abs().max()) > 0.095
    assert 0.8 <= float(w[:, 2:4].min()) and float(w[:, 2:4].max()) <= 1.25
    assert float(w[:, 4].abs().max()) <= 0.2
    assert abs(float(torch.log(w[:, 2:4]).mean())) < 0.01  # log-uniform, symmetric for (0.8, 1.25)
    a = ae.random_warps(2000, seed=1, max_rotation_deg=12, scale_range=(0.85, 1.15), max_shift_frac=0.06)
    assert np.abs(a[:, :2]).max() <= 0.12 and np.abs(a[:, 4]).max() <= math.radians(12)
    assert 0.85 <= a[:, 2:4].min() and a[:, 2:4].max() <= 1.15
    np.testing.assert_array_equal(
        a, ae.random_warps(2000, seed=1, max_rotation_deg=12, scale_range=(0.85, 1.15), max_shift_frac=0.06)
    )


def test_consistency_loss_against_loop_and_zero_when_consistent():
    p = _similarities(4, 0)
    w = _similarities(4, 1)
    pw = np.array([_params_of_similarity(np.linalg.inv(_mat(w[i])) @ _mat(p[i])) for i in range(4)])
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    assert float(consistency_loss(t(p), t(pw), t(w))) < 1e-20
    other = _similarities(4, 2)
    got = float(consistency_loss(t(p), t(other), t(w), k=5))
    ref = 0.0
    for i in range(4):
        d = np.linalg.inv(_mat(p[i])) @ _mat(w[i]) @ _mat(other[i])
        for x, y in _points(5):
            qx, qy = _map(d, x, y)
            ref += (qx - x) ** 2 + (qy - y) ** 2
    assert got == pytest.approx(ref / (4 * 25), rel=1e-10)
    pp, oo = t(p).requires_grad_(), t(other).requires_grad_()
    consistency_loss(pp, oo, t(w)).backward()
    assert pp.grad.abs().sum() > 0 and oo.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ residuals
def test_matrices_and_grid():
    p = _similarities(3, 3)
    p[:, 3] *= 0.8  # anisotropic
    np.testing.assert_allclose(ae.matrices(p), np.stack([_mat(r) for r in p]), atol=1e-15)
    g = ae.grid(3)
    assert g.shape == (9, 2)
    assert tuple(g[0]) == pytest.approx((-2 / 3, -2 / 3)) and tuple(g[5]) == pytest.approx((2 / 3, 0))


def test_warp_residual_against_loop():
    p, pw, w = _similarities(5, 4), _similarities(5, 5), _similarities(5, 6)
    pw[:, 2] *= 1.1  # not a similarity: any parameters work
    got = ae.warp_residual(p, pw, w, (100, 60), k=4)
    for i in range(5):
        mp, mpw, mw = _mat(p[i]), _mat(pw[i]), _mat(w[i])
        res = base = 0.0
        for x, y in _points(4):
            ref = _map(mp, x, y)
            res += _px(_map(mw @ mpw, x, y), ref, 100, 60)
            base += _px(_map(mw @ mp, x, y), ref, 100, 60)
        assert got["residual"][i] == pytest.approx(res / 16, rel=1e-12)
        assert got["baseline"][i] == pytest.approx(base / 16, rel=1e-12)


def test_warp_residual_known_answers():
    p, w = _similarities(6, 7), _similarities(6, 8)
    perfect = np.array([_params_of_similarity(np.linalg.inv(_mat(w[i])) @ _mat(p[i])) for i in range(6)])
    r = ae.warp_residual(p, perfect, w, 128)
    assert r["residual"].max() < 1e-9 and r["baseline"].min() > 0
    s = ae.summarize(r["residual"], r["baseline"], 128)
    assert s["share_removed"] == pytest.approx(1.0) and s["n"] == 6
    blind = ae.warp_residual(p, p, w, 128)  # a network that ignores its input removes nothing
    np.testing.assert_allclose(blind["residual"], blind["baseline"])
    assert ae.summarize(blind["residual"], blind["baseline"], 128)["share_removed"] == pytest.approx(0.0)
    # a pure shift of 0.1 normalized units on a 200 px wide image moves every point by 10 px
    shift = np.array([[0.1, 0.0, 1.0, 1.0, 0.0]])
    one = ae.warp_residual(np.array([[0, 0, 1, 1, 0.0]]), np.array([[0, 0, 1, 1, 0.0]]), shift, (200, 100))
    assert one["baseline"][0] == pytest.approx(10.0)


def test_truth_residual_against_loop_and_exact_prediction():
    u, r = _similarities(5, 9), np.array([0.02, -0.17, 0.86, 0.64, 0.0])
    pred = _similarities(5, 10)
    got = ae.truth_residual(pred, u, r, (64, 80), k=3)
    for i in range(5):
        res = base = 0.0
        for x, y in _points(3):
            target = _map(_mat(u[i]) @ _mat(r), x, y)
            res += _px(_map(_mat(pred[i]), x, y), target, 64, 80)
            base += _px(_map(_mat(r), x, y), target, 64, 80)
        assert got["residual"][i] == pytest.approx(res / 9, rel=1e-12)
        assert got["baseline"][i] == pytest.approx(base / 9, rel=1e-12)
    # the ideal prediction U R (a 5-parameter form exists when U and R are similarities)
    rs = np.array([0.02, -0.17, 0.8, 0.8, 0.1])
    ideal = np.array([_params_of_similarity(_mat(u[i]) @ _mat(rs)) for i in range(5)])
    assert ae.truth_residual(ideal, u, rs, 128)["residual"].max() < 1e-9
    fitted = ae.fit_reference(ideal, u, (128, 128))
    np.testing.assert_allclose(fitted, _mat(rs), atol=1e-9)
    assert ae.truth_residual(ideal, u, fitted, 128)["residual"].max() < 1e-9


def test_fit_reference_is_least_squares():
    u, pred = _similarities(4, 11), _similarities(4, 12)
    fitted = ae.fit_reference(pred, u, (90, 60), k=4)

    def cost(m):
        return sum(
            _px(_map(_mat(pred[i]), x, y), _map(_mat(u[i]) @ m, x, y), 90, 60) ** 2
            for i in range(4)
            for x, y in _points(4)
        )

    best = cost(fitted)
    rng = np.random.default_rng(0)
    for _ in range(20):  # any perturbation of the 6 entries costs more
        m = fitted.copy()
        m[:2] += rng.normal(scale=1e-3, size=(2, 3))
        assert cost(m) > best


def test_bound_share():
    pos = np.array([[0.0, 0.985, -0.99, 0.5, -1.0], [0.2, 0.97, 0.1, 0.0, 0.0]])
    b = ae.bound_share(pos, tol=0.01)
    assert b["share_params"] == pytest.approx(3 / 10)
    assert b["share_images_any"] == pytest.approx(0.5)
    assert b["per_param"] == {"tx": 0.0, "ty": 0.5, "sx": 0.5, "sy": 0.0, "theta": 0.5}


# -------------------------------------------------------------------------------------- end to end
def _blob_images(n, size, rng):
    yy, xx = np.meshgrid((np.arange(size) + 0.5) * 2 / size - 1, (np.arange(size) + 0.5) * 2 / size - 1, indexing="ij")
    c = rng.uniform(-0.3, 0.3, (n, 2))
    imgs = np.exp(-((xx[None] - c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2) / 0.02)
    return torch.tensor(imgs[:, None], dtype=torch.float64)


def _centroid_predictor(x):
    """Aligns a blob to the centre: the parameters shift by the blob's (normalized) centroid."""
    s = x.shape[-1]
    c = (torch.arange(s, dtype=x.dtype) + 0.5) * 2 / s - 1
    m = x[:, 0].clamp_min(0) ** 4
    cx = (m.sum(1) * c).sum(1) / m.sum((1, 2))
    cy = (m.sum(2) * c).sum(1) / m.sum((1, 2))
    one = torch.ones_like(cx)
    return torch.stack([cx, cy, one, one, 0 * cx], 1)


def test_measure_alignment_end_to_end():
    imgs = _blob_images(12, 64, np.random.default_rng(0))
    shifts = {"max_rotation_deg": 0.0, "scale_range": (1.0, 1.0), "max_shift_frac": 0.06}
    rep = ae.measure_alignment(_centroid_predictor, imgs, seed=3, warps=shifts, batch_size=5)
    assert rep["n_images"] == 12 and rep["image_size"] == [64, 64]
    assert rep["warp"]["share_removed"] > 0.97 and rep["warp"]["baseline_px"] > 0.5
    constant = ae.measure_alignment(
        lambda x: torch.tensor([[0.1, 0, 0.9, 0.9, 0.05]]).expand(len(x), -1),
        imgs,
        truth=_centroid_predictor(imgs),
        reference=[0, 0, 1, 1, 0.0],
        seed=3,
    )
    assert constant["warp"]["share_removed"] == pytest.approx(0.0, abs=1e-12)
    assert constant["truth"]["deformed"]["n"] == 12
    # the truth parameters (the centroid shift) are what the centroid predictor outputs: exact
    net_like = ae.measure_alignment(_centroid_predictor, imgs, truth=_centroid_predictor(imgs), seed=3)
    assert net_like["truth"]["deformed"]["residual_px"] < 1e-9
    assert net_like["truth"]["deformed"]["share_removed"] == pytest.approx(1.0)
    net = AlignmentNet(input_size=32, max_scale=1.4)
    at_bound = ae.measure_alignment(
        lambda x: net.bound(torch.full((len(x), 5), 10.0)), imgs.float(), position=net.bound_position, seed=0
    )
    assert at_bound["bounds"]["share_params"] == 1.0


# ------------------------------------------------------------------------------------- structure loss
def test_unit_feature_term_against_reference_and_calibration():
    torch.manual_seed(4)
    a, t = torch.rand(3, 1, 32, 32), torch.rand(1, 1, 32, 32)
    loss = StructureLoss(feature_net="resnet18", pretrained=False, feat_norm="unit", feat_weight=2.0, pixel_weight=0.5)
    got = loss(a, t)
    with torch.no_grad():
        from cianet.models.backbones import gray_to_input

        fa, ft = loss.features(gray_to_input(a)).double(), loss.features(gray_to_input(t)).double()
    ref = 0.0
    _, c, h, w = fa.shape
    for b in range(3):
        for i in range(h):
            for j in range(w):
                va, vt = fa[b, :, i, j], ft[0, :, i, j]
                ref += float(((va / va.norm() - vt / vt.norm()) ** 2).sum())
    assert float(got["feat"]) == pytest.approx(ref / (3 * h * w), rel=1e-4)
    assert float(got["total"]) == pytest.approx(2.0 * float(got["feat"]) + 0.5 * float(got["pixel"]), rel=1e-5)
    scales = loss.calibrate(a, t)
    after = loss(a, t)
    assert scales["feat_scale"] == pytest.approx(1 / float(got["feat"]), rel=1e-5)
    assert float(after["total"]) == pytest.approx(2.0 + 0.5, rel=1e-5)  # each term is 1 on the calibration batch
    assert float(after["feat"]) == pytest.approx(float(got["feat"]))  # raw terms are unchanged
    with pytest.raises(ValueError):
        StructureLoss(feature_net="none", feat_norm="l1")


def test_read_synth_truth(tmp_path):
    p = tmp_path / "synth_truth.csv"
    p.write_text(
        "Image Index,Patient ID,deformed,strength,tx,ty,sx,sy,theta,box_label\n"
        "a.png,1,1,mild,0.1,-0.2,1.05,0.95,0.03,Mass\n"
        "a.png,1,1,mild,0.1,-0.2,1.05,0.95,0.03,Nodule\n"
        "b.png,2,0,none,0.0,0.0,1.0,1.0,0.0,\n"
    )
    t = ae.read_synth_truth(p)
    assert t == {
        "a.png": {"params": (0.1, -0.2, 1.05, 0.95, 0.03), "strength": "mild"},
        "b.png": {"params": (0.0, 0.0, 1.0, 1.0, 0.0), "strength": "none"},
    }
    (tmp_path / "bad.csv").write_text("Image Index,tx\nx.png,1\n")
    with pytest.raises(ValueError, match="bad.csv"):
        ae.read_synth_truth(tmp_path / "bad.csv")

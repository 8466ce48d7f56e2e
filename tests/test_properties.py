"""Property-based tests (hypothesis): box transforms, grid targets, IoU and the image readers, each against a
slow obvious reference or an invariant, on inputs hypothesis draws (and shrinks when one fails)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Coordinates on a quarter-pixel lattice: exact in float, so the references can use exact fractions.
quarter = st.integers(min_value=-40, max_value=800).map(lambda v: v / 4)
length = st.integers(min_value=0, max_value=600).map(lambda v: v / 4)


# ------------------------------------------------------------------------------------------ grid targets
def reference_grid(box, size, grid):
    """Cell (i, j) is 1 iff its rectangle and the box overlap with positive area, in exact fractions."""
    x, y, w, h = (Fraction(v) for v in box)
    (width, height), (gw, gh) = (Fraction(v) for v in size), grid
    out = np.zeros((gh, gw), np.float32)
    for i in range(gh):
        for j in range(gw):
            cx0, cx1 = j * width / gw, (j + 1) * width / gw
            cy0, cy1 = i * height / gh, (i + 1) * height / gh
            ox = min(cx1, x + w) - max(cx0, x)
            oy = min(cy1, y + h) - max(cy0, y)
            out[i, j] = float(ox > 0 and oy > 0)
    return out


@FAST
@given(
    x=quarter,
    y=quarter,
    w=length,
    h=length,
    width=st.integers(8, 200),
    height=st.integers(8, 200),
    gw=st.integers(1, 16),
    gh=st.integers(1, 16),
)
@pytest.mark.slow
def test_grid_target_is_the_exact_overlap_of_cells_and_box(x, y, w, h, width, height, gw, gh):
    from cianet.losses import box_to_grid

    got = box_to_grid((x, y, w, h), (width, height), (gw, gh)).numpy()
    np.testing.assert_array_equal(got, reference_grid((x, y, w, h), (width, height), (gw, gh)))


@FAST
@given(
    boxes=st.lists(st.tuples(st.integers(0, 2), quarter, quarter, length, length), max_size=5),
    gw=st.integers(1, 12),
    gh=st.integers(1, 12),
)
def test_batched_targets_unite_the_boxes_of_a_class(boxes, gw, gh):
    from cianet.losses import box_to_grid, build_grid_targets

    targets, mask = build_grid_targets([boxes], num_classes=3, image_size=(100, 80), grid_size=(gw, gh))
    for c in range(3):
        mine = [b[1:] for b in boxes if b[0] == c]
        union = np.zeros((gh, gw), np.float32)
        for b in mine:
            union = np.maximum(union, box_to_grid(b, (100, 80), (gw, gh)).numpy())
        np.testing.assert_array_equal(targets[0, c].numpy(), union)
        assert mask[0, c].item() == float(bool(mine))


# --------------------------------------------------------------------------------------------------- IoU
@FAST
@given(
    region=st.lists(st.lists(st.booleans(), min_size=9, max_size=9), min_size=7, max_size=7),
    x=st.integers(-4, 12),
    y=st.integers(-4, 10),
    w=st.integers(0, 12),
    h=st.integers(0, 10),
)
def test_region_iou_matches_counting_pixels(region, x, y, w, h):
    from cianet.metrics import region_box_iou

    region = np.array(region, dtype=bool)  # (7, 9): pixel cells
    box = np.zeros_like(region)
    box[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)] = True  # the box clipped to the image
    inter, union = int((region & box).sum()), int((region | box).sum())
    expected = 0.0 if not region.any() or union == 0 else inter / union
    got = region_box_iou(region, (x, y, w, h))
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(expected, abs=1e-12)


@FAST
@given(
    x=st.integers(0, 20),
    y=st.integers(0, 20),
    w=st.integers(1, 10),
    h=st.integers(1, 10),
    cw=st.sampled_from([1.0, 2.0, 4.0]),
)
def test_a_region_equal_to_its_box_has_iou_one(x, y, w, h, cw):
    from cianet.metrics import region_box_iou

    region = np.zeros((32, 32), bool)
    region[y : y + h, x : x + w] = True
    assert region_box_iou(region, (x * cw, y * cw, w * cw, h * cw), cw, cw) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ box transforms
params_st = st.tuples(st.floats(-0.3, 0.3), st.floats(-0.3, 0.3), st.floats(0.7, 1.4), st.floats(0.7, 1.4))
box_st = st.tuples(st.floats(0, 200), st.floats(0, 200), st.floats(1, 100), st.floats(1, 100))


@FAST
@given(
    p=params_st,
    box=box_st,
    src=st.tuples(st.integers(64, 400), st.integers(64, 400)),
    dst=st.tuples(st.integers(64, 400), st.integers(64, 400)),
)
def test_boxes_without_rotation_map_by_the_obvious_formula_and_back(p, box, src, dst):
    from cianet.models.alignment import boxes_to_aligned, boxes_to_original

    tx, ty, sx, sy = p
    params = (tx, ty, sx, sy, 0.0)
    got = boxes_to_aligned(np.array([box]), params, src, dst)[0]
    x, y, w, h = box
    # aligned normalized u = (q - t) / s, with q = 2 x / W - 1
    x0 = ((2 * x / src[0] - 1 - tx) / sx + 1) * dst[0] / 2
    y0 = ((2 * y / src[1] - 1 - ty) / sy + 1) * dst[1] / 2
    expected = (x0, y0, w * dst[0] / (src[0] * sx), h * dst[1] / (src[1] * sy))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    back = boxes_to_original(np.array([got]), params, dst, src)[0]
    np.testing.assert_allclose(back, box, rtol=1e-9, atol=1e-7)


@FAST
@given(p=params_st, theta=st.floats(-0.5, 0.5), box=box_st)
def test_rotated_boxes_contain_their_mapped_corners(p, theta, box):
    from cianet.models.alignment import boxes_to_aligned, boxes_to_original

    params = (*p, theta)
    aligned = boxes_to_aligned(np.array([box]), params, (256, 256), (256, 256))[0]
    back = boxes_to_original(np.array([aligned]), params, (256, 256), (256, 256))[0]
    # the bounding box of the bounding box holds the original box
    x, y, w, h = box
    assert back[0] <= x + 1e-6 and back[1] <= y + 1e-6
    assert back[0] + back[2] >= x + w - 1e-6 and back[1] + back[3] >= y + h - 1e-6
    assert all(math.isfinite(v) for v in aligned) and aligned[2] >= 0 and aligned[3] >= 0


# ------------------------------------------------------------------------------------------ image readers
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), prefix=st.sampled_from([b"", PNG_MAGIC, b"\xff\xd8\xff", b"\0" * 128 + b"DICM"]))
def test_random_bytes_never_crash_the_readers(tmp_path, data, prefix):
    from cianet.data.io import XrayReadError, load_xray, read_image_size

    path = tmp_path / "x.png"
    path.write_bytes(prefix + data)
    for read in (load_xray, read_image_size):
        try:
            out = read(path)
        except XrayReadError as exc:
            assert str(path) in str(exc)  # the library's error, naming the file
            continue
        if read is load_xray:  # the rare valid image: gray values in [0, 1]
            assert out.ndim == 2 and out.dtype == np.float32 and 0.0 <= out.min() <= out.max() <= 1.0


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=1, max_value=400), flip=st.integers(min_value=0, max_value=10_000))
def test_truncated_or_bit_flipped_pngs_raise_only_the_librarys_error(tmp_path, cut, flip):
    from PIL import Image

    from cianet.data.io import XrayReadError, load_xray

    src = tmp_path / "ok.png"
    Image.fromarray((np.arange(48 * 40) % 251).astype(np.uint8).reshape(48, 40)).save(src)
    raw = bytearray(src.read_bytes())
    raw[flip % len(raw)] ^= 0xFF
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(raw[: max(1, len(raw) - cut)]))
    try:
        out = load_xray(bad)
    except XrayReadError as exc:
        assert str(bad) in str(exc)
    else:
        assert out.shape == (48, 40) and 0.0 <= out.min() <= out.max() <= 1.0

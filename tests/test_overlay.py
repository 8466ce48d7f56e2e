"""The overlay PNG (cianet.inference.overlay): what each panel shows, where, and in which colours.

Every test decodes the PNG that ``render_overlay`` returns and looks at pixels at the positions that
``overlay_layout`` gives, over a flat gray X-ray, so that any colour found there comes from the drawing.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cianet.inference.overlay import (
    BOX_WIDTH,
    HEAT_ALPHA,
    TAB10,
    colormap_table,
    encode_png,
    overlay_layout,
    render_overlay,
    write_overlay,
)
from cianet.inference.predictor import PredictedBox, PredictionResult
from cianet.labels import BOX_LABELS, LABELS
from cianet.models.alignment import masks_to_original

GRAY = 0.5
GRAY_U8 = 128  # round(0.5 * 255)


def _result(size=(512, 512), boxes=(), heatmaps=None, attention=None, align_params=None, probs=None, grid=16):
    probabilities = {lab: 0.2 for lab in LABELS}
    probabilities.update(probs or {})
    heat = np.zeros((len(BOX_LABELS), grid, grid), np.float32) if heatmaps is None else heatmaps
    return PredictionResult(
        source="/data/xr/case-01.png",
        image_size=size,
        probabilities=probabilities,
        boxes=list(boxes),
        heatmaps=heat,
        attention=attention,
        align_params=align_params,
        negative=None if attention is None else "neg-7.png",
        logits=np.zeros((len(LABELS), 8, 8), np.float32),
    )


def _render(result, thresholds=None) -> np.ndarray:
    w, h = result.image_size
    png = render_overlay(np.full((h, w), GRAY, np.float32), result, list(BOX_LABELS), thresholds)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im).copy()


def _crop(rgb: np.ndarray, rect) -> np.ndarray:
    x, y, w, h = rect
    return rgb[y : y + h, x : x + w]


def _is_gray(px: np.ndarray) -> np.ndarray:
    return (px[..., 0] == px[..., 1]) & (px[..., 1] == px[..., 2])


def test_box_outline_has_the_class_colour_where_the_box_maps_in_the_display():
    """A Mass box (5th box class: tab10 C4) on a 960 x 800 image, drawn in the 512 x 427 display."""
    color = TAB10[BOX_LABELS.index("Mass")]
    box = PredictedBox("Mass", x=300.0, y=200.0, w=240.0, h=160.0, score=0.87)
    rgb = _render(_result(size=(960, 800), boxes=[box]))
    lay = overlay_layout((960, 800), len(BOX_LABELS))
    assert lay.display_size == (512, 427) and lay.boxes_panel[2:] == (512, 427)
    sx, sy = lay.display_scale((960, 800))
    # the box's pixel rectangle at display scale, computed here from the coordinates (last pixel inclusive)
    x0, y0 = round(300 * sx), round(200 * sy)
    x1, y1 = round(540 * sx) - 1, round(360 * sy) - 1
    assert (x0, y0, x1, y1) == (160, 107, 287, 191)
    panel = _crop(rgb, lay.boxes_panel)
    mid = (y0 + y1) // 2
    for col in (x0, x0 + BOX_WIDTH - 1, x1 - BOX_WIDTH + 1, x1):  # left and right edges, over the rows below the label
        assert (panel[y0 + 20 : y1 - 2, col] == color).all(), col
    for row in (y1 - BOX_WIDTH + 1, y1):  # bottom edge
        assert (panel[row, x0 : x1 + 1] == color).all(), row
    # across the middle row: exactly the two edges are coloured, the rest is the plain X-ray
    line = panel[mid]
    coloured = np.flatnonzero((line == color).all(axis=1))
    assert coloured.tolist() == [x0, x0 + 1, x1 - 1, x1]
    assert (np.delete(line, coloured, axis=0) == GRAY_U8).all()
    # the label "Mass 0.87" on a filled patch of the box colour inside its top-left corner, in white
    label = panel[y0 + BOX_WIDTH + 1 : y0 + BOX_WIDTH + 12, x0 + BOX_WIDTH + 1 : x0 + BOX_WIDTH + 50]
    assert (label == color).all(axis=-1).mean() > 0.4
    assert (label.min(axis=-1) > 230).any()
    # the legend, below the X-ray (never over it), shows every box class colour
    lx, ly = lay.legend
    assert ly >= lay.boxes_panel[1] + lay.boxes_panel[3]
    legend = rgb[ly : ly + 15 * (len(BOX_LABELS) // 2 + 1) + 10, lx : lx + 512]
    for c in TAB10[: len(BOX_LABELS)]:
        assert (legend == c).all(axis=-1).sum() >= 20, c


def test_heatmap_panel_is_jet_tinted_where_hot_and_plain_gray_where_cold():
    k = BOX_LABELS.index("Effusion")
    heat = np.zeros((len(BOX_LABELS), 16, 16), np.float32)
    heat[k, :8, :8] = 1.0  # top left: jet's top (dark red)
    heat[k, 8:, :8] = 0.5  # bottom left: jet's middle (green)
    heat[k, :8, 8:] = 0.03  # top right: below the 0.05 floor, transparent
    rgb = _render(_result(heatmaps=heat))
    lay = overlay_layout((512, 512), len(BOX_LABELS))
    panel = _crop(rgb, lay.heat_panels[k])
    q = panel.shape[0] // 4  # a quadrant's centre, away from cell edges
    top_left, bottom_left = panel[q, q].astype(int), panel[3 * q, q].astype(int)
    top_right, bottom_right = panel[q, 3 * q], panel[3 * q, 3 * q]
    jet = colormap_table("jet").astype(float)
    expected_hot = np.round(GRAY_U8 * (1 - HEAT_ALPHA) + jet[255] * HEAT_ALPHA)
    assert np.abs(top_left - expected_hot).max() <= 1
    assert top_left[0] > top_left[1] + 40 and top_left[1] == top_left[2]  # red-ish
    assert bottom_left[1] > bottom_left[0] + 20 and bottom_left[1] > bottom_left[2] + 20  # green-ish
    assert (top_right == GRAY_U8).all() and (bottom_right == GRAY_U8).all()
    # the other classes' panels have no heat at all: plain X-ray
    for j in range(len(BOX_LABELS)):
        if j != k:
            assert (_crop(rgb, lay.heat_panels[j]) == GRAY_U8).all(), BOX_LABELS[j]


def test_heatmap_region_moves_with_the_alignment_as_masks_to_original_maps_it():
    k = 0
    heat = np.zeros((len(BOX_LABELS), 16, 16), np.float32)
    heat[k, 4:8, 4:8] = 0.9
    lay = overlay_layout((512, 512), len(BOX_LABELS))
    w, h = lay.heat_size
    shifted = (0.3, 0.2, 1.0, 1.0, 0.0)  # the aligned frame sits 0.3 / 0.2 (of half the width) right / down
    tinted = {}
    for name, params in (("identity", None), ("shifted", shifted)):
        panel = _crop(_render(_result(heatmaps=heat, align_params=params)), lay.heat_panels[k])
        tinted[name] = ~_is_gray(panel)
        expected = masks_to_original(heat[k : k + 1], params or (0.0, 0.0, 1.0, 1.0, 0.0), (w, h))[0] >= 0.05
        assert np.array_equal(tinted[name], expected), name
    # independent of masks_to_original: the region's centre moved by tx/2 and ty/2 of the panel
    (ys0, xs0), (ys1, xs1) = (np.argwhere(tinted[n]).mean(axis=0) for n in ("identity", "shifted"))
    assert xs1 - xs0 == pytest.approx(0.15 * w, abs=1.5) and ys1 - ys0 == pytest.approx(0.10 * h, abs=1.5)


def test_attention_panel_shows_inferno_where_non_zero_with_a_colour_bar():
    att = np.linspace(-1.0, 2.0, 64, dtype=np.float32).reshape(8, 8)
    att[4:, :4] = 0.0  # exact zeros (as outside the aligned image) stay transparent
    rgb = _render(_result(attention=att))
    lay = overlay_layout((512, 512), len(BOX_LABELS))
    panel = _crop(rgb, lay.attention_panel)
    inferno = colormap_table("inferno").astype(float)
    # the last cell holds the maximum: inferno's top at alpha 0.5; the zero block: plain gray
    assert np.abs(panel[-10, -10] - np.round(GRAY_U8 * 0.5 + inferno[255] * 0.5)).max() <= 1
    assert np.abs(panel[10, 10] - np.round(GRAY_U8 * 0.5 + inferno[0] * 0.5)).max() <= 1
    assert (panel[5 * 64 + 32, 2 * 64 + 32] == GRAY_U8).all()
    strip = _crop(rgb, lay.colorbar)
    assert (strip[0] == inferno[255]).all() and (strip[-1] == inferno[0]).all()  # the maximum at the top


def test_baseline_non_square_and_small_images_render():
    """No attention, no alignment, no boxes, a 960 x 800 image; then a 300 x 200 image with many boxes."""
    rgb = _render(_result(size=(960, 800), align_params=None, attention=None))
    lay = overlay_layout((960, 800), len(BOX_LABELS))
    assert rgb.shape[1::-1] == lay.size and lay.size[0] > 500
    assert _is_gray(_crop(rgb, lay.attention_panel)).all()  # the plain X-ray under "no attention map"
    assert (_crop(rgb, lay.attention_panel) == GRAY_U8).all()

    rng = np.random.default_rng(3)
    boxes = [
        PredictedBox(BOX_LABELS[i % 8], *rng.uniform(-20, 290, 2), *rng.uniform(1, 120, 2), 0.6) for i in range(150)
    ] + [PredictedBox("Not-a-box-class", 290, 190, 30, 30, 0.9)]
    heat = rng.random((len(BOX_LABELS), 32, 32)).astype(np.float32)
    rgb = _render(
        _result(
            size=(300, 200),
            boxes=boxes,
            heatmaps=heat,
            attention=rng.standard_normal((8, 8)),
            align_params=(0.05, -0.1, 1.1, 0.9, 0.2),
            grid=32,
        )
    )
    lay = overlay_layout((300, 200), len(BOX_LABELS))
    assert lay.display_size == (512, 341) and rgb.shape[1::-1] == lay.size  # scaled up to fill the panel
    assert not _is_gray(_crop(rgb, lay.attention_panel)).all()


def test_class_title_is_marked_once_the_probability_reaches_its_threshold():
    k = BOX_LABELS.index("Nodule")
    color = TAB10[k]
    lay = overlay_layout((512, 512), len(BOX_LABELS))
    cx, cy = lay.titles[2 + k]

    def title_pixels(thresholds) -> int:
        rgb = _render(_result(probs={"Nodule": 0.5}), thresholds)
        return int((rgb[cy : cy + 22, cx - 120 : cx + 120] == color).all(axis=-1).sum())

    plain, marked = title_pixels({"Nodule": 0.51}), title_pixels({"Nodule": 0.5})
    assert plain > 0 and marked > plain + 100  # bold and underlined
    assert title_pixels(None) == marked  # 0.5 by default


def test_encode_png_round_trips():
    rng = np.random.default_rng(0)
    for shape in ((37, 53, 3), (400, 700, 3)):
        rgb = rng.integers(0, 256, shape, dtype=np.uint8)
        rgb[: shape[0] // 2] = 200  # a flat band, as the overlay's margins
        png = encode_png(rgb)
        with Image.open(io.BytesIO(png)) as im:
            assert im.mode == "RGB" and np.array_equal(np.asarray(im), rgb)
        with Image.open(io.BytesIO(png)) as im:
            im.verify()  # chunk lengths and CRCs


def test_write_overlay_writes_the_png_atomically(tmp_path):
    path = tmp_path / "case-01.overlay.png"
    write_overlay(path, np.full((200, 240), GRAY, np.float32), _result(size=(240, 200)), list(BOX_LABELS))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    with Image.open(path) as im:
        assert im.size[0] > 500 and im.mode in ("RGB", "RGBA")


def test_one_box_per_class_and_labels_that_do_not_overlap():
    """Three Mass boxes (only the best is drawn) and a Nodule box at the same corner: two labels, apart."""
    from cianet.inference.overlay import top_boxes

    boxes = [
        PredictedBox("Mass", 100.0, 100.0, 200.0, 150.0, 0.6),
        PredictedBox("Mass", 100.0, 100.0, 80.0, 80.0, 0.9),
        PredictedBox("Mass", 400.0, 400.0, 50.0, 50.0, 0.7),
        PredictedBox("Nodule", 100.0, 100.0, 60.0, 60.0, 0.8),
    ]
    assert [(b.label, b.score) for b in top_boxes(boxes)] == [("Mass", 0.9), ("Nodule", 0.8)]
    rgb = _render(_result(boxes=boxes))
    lay = overlay_layout((512, 512), len(BOX_LABELS))
    panel = _crop(rgb, lay.boxes_panel)
    mass, nodule = TAB10[BOX_LABELS.index("Mass")], TAB10[BOX_LABELS.index("Nodule")]
    assert not (panel[395:460, 395:460] == mass).all(axis=-1).any()  # the third Mass box is not drawn
    # the two label patches (filled with their class colour) share no row where they would overlap
    rows = lambda c: set(np.flatnonzero(((panel[:, 102:150] == c).all(axis=-1)).sum(axis=1) > 30))  # noqa: E731
    assert rows(mass) and rows(nodule) and not rows(mass) & rows(nodule)


def test_each_heatmap_panel_has_a_colour_bar_from_0_to_1():
    rgb = _render(_result())
    lay = overlay_layout((512, 512), len(BOX_LABELS))
    jet = colormap_table("jet")
    for rect in lay.heat_bars:
        x, y, w, h = rect
        strip = rgb[y + h // 2, x : x + w].astype(int)
        assert np.abs(strip[0] - jet[0]).max() <= 1 and np.abs(strip[-1] - jet[255]).max() <= 1
    for (px, py, pw, ph), (x, y, w, _h) in zip(lay.heat_panels, lay.heat_bars):
        assert y >= py + ph and px <= x and x + w <= px + pw  # under its own panel

"""Overlay figures of a prediction: the X-ray with its boxes, the attention map dM and per-class heatmaps.

Drawn with Pillow and numpy straight into one RGB canvas (no matplotlib figure: laying out and rasterizing
a 10-panel figure cost more than the networks themselves; matplotlib is only asked once per process for
its "jet" and "inferno" colour tables). Layout, top to bottom (:func:`overlay_layout` gives the pixel
positions):

* a title line ("cianet prediction ...");
* top left, titled with the file name and the number of boxes: the X-ray scaled to ``DISPLAY_MAX`` px on
  its longest side, with the predicted boxes (one colour per box class, matplotlib's tab10 cycle; a label
  "Class 0.87" on a filled background of the box's colour at its top-left corner) and, at the lower left
  (below the X-ray only when it is too flat to hold it), a legend of every box class with its colour and
  image probability;
* top right, titled "contrast attention dM (negative: NAME)": the same X-ray with the normalized contrast
  attention ``dM`` in "inferno" at alpha 0.5 where it is non-zero (spanning the smallest to the largest
  non-zero value of the map), and at its right a colour bar: the gradient strip with those two values at
  its bottom and top; for the baseline model (no attention) the plain X-ray under the title "no attention
  map (baseline model)";
* one panel per box class, ``HEAT_COLS`` a row: the X-ray with the class's cell probabilities in "jet"
  (0..1) at alpha 0.45, cells below 0.05 left transparent; titled "Class p=0.87" in the class colour, in
  bold and underlined when the probability reaches the class's threshold;
* a bottom line with the probabilities of the classes without boxes.

Grids live in the aligned frame of the network input; they are mapped back through the alignment into the
image frame at display size (``cianet.models.alignment.masks_to_original``), and boxes (pixels of the image
file) are scaled to the display size, so every panel shows the pixel frame of the image file.

The PNG is encoded here too (:func:`encode_png`: one fixed row filter, zlib's fastest level), because
Pillow's encoder alone took longer than all the drawing.
"""

from __future__ import annotations

import functools
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cianet.data.io import resize_gray
from cianet.metrics import format_probability  # "> 0.9999" for a saturated probability, never "1.00"
from cianet.models.alignment import IDENTITY_PARAMS, masks_to_original
from cianet.utils.atomic import atomic_write_bytes

#: a cianet.inference.predictor.PredictionResult / PredictedBox: not imported, so that a result can draw itself
#: with this module (PredictionResult.show, cianet.inference.notebook) without an import cycle
PredictionResult = PredictedBox = Any
DISPLAY_MAX = 512  # longest side of the X-ray in the two top panels
HEAT_COLS = 4
HEAT_ALPHA = 0.45
HEAT_FLOOR = 0.05  # heatmap cells below this stay transparent, so the anatomy under an empty map stays visible
ATTENTION_ALPHA = 0.5
#: matplotlib's default colour cycle C0..C9 (tab10): box class k gets TAB10[k % 10]
TAB10: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
UNKNOWN_BOX_COLOR = (255, 255, 0)  # a box whose class is not among the box classes
BACKGROUND = (255, 255, 255)
BANNER_COLOR = (176, 0, 32)  # the out-of-domain warning's background
TEXT_COLOR = (0, 0, 0)
BOX_WIDTH = 2
PNG_COMPRESS_LEVEL = 1  # zlib's fastest: its default, 6, took 3-4x as long for files ~8 % smaller

# canvas geometry (pixels)
_MARGIN = 10
_TITLE_H = 30
_PANEL_TITLE_H = 22
_TOP_GAP = 24  # between the two top panels
_COLORBAR_W = 64  # gradient strip and its numbers, right of the attention panel
_STRIP_W = 14
_HEAT_GAP = 14
_ROW_GAP = 10
_BOTTOM_H = 24
_LEGEND_LINE = 15
_LEGEND_PAD = 5
_LEGEND_COLS = 2  # the legend's entries in columns, below the X-ray (never over it)
_LEGEND_GAP = 6  # between the X-ray and the legend
_HEAT_BAR_H = 16  # under each heatmap panel: its colour bar (8 px) and the 0 / 1 at its ends

Rect = tuple[int, int, int, int]  # (x, y, width, height) in canvas pixels


@dataclass(frozen=True)
class OverlayLayout:
    """Where :func:`render_overlay` draws what, in pixels of the canvas (x right, y down).

    Attributes:
        size: ``(width, height)`` of the canvas.
        display_size: ``(W', H')`` of the X-ray in the two top panels.
        heat_size: ``(w, h)`` of the X-ray in each heatmap panel.
        boxes_panel: the X-ray of the top-left panel (boxes, legend), ``(x, y, W', H')``.
        attention_panel: the X-ray of the top-right panel, ``(x, y, W', H')``.
        colorbar: the attention colour bar's gradient strip.
        legend: the top-left corner of the box-class legend.
        heat_panels: the X-ray of each box class's heatmap panel, ``(x, y, w, h)``, in box-class order.
        titles: the top-centre anchor of each panel title: boxes, attention, then the heatmap panels.
        bottom_line: the top-centre anchor of the line of the other classes' probabilities.
        heat_bars: under each heatmap panel, its colour bar's gradient strip (jet, 0 at the left, 1 at the right).
    """

    size: tuple[int, int]
    display_size: tuple[int, int]
    heat_size: tuple[int, int]
    boxes_panel: Rect
    attention_panel: Rect
    colorbar: Rect
    legend: tuple[int, int]
    heat_panels: tuple[Rect, ...]
    titles: tuple[tuple[int, int], ...]
    bottom_line: tuple[int, int]
    heat_bars: tuple[Rect, ...] = ()

    def display_scale(self, image_size: tuple[int, int]) -> tuple[float, float]:
        """``(sx, sy)``: display pixels of the top panels per pixel of an image of ``image_size = (W, H)``."""
        return self.display_size[0] / image_size[0], self.display_size[1] / image_size[1]


def _fit(image_size: tuple[int, int], side: int) -> tuple[int, int]:
    """``(w, h)`` of an image of ``image_size`` scaled so that its longest side is ``side``."""
    w, h = image_size
    f = side / max(w, h)
    return max(1, round(w * f)), max(1, round(h * f))


def _placed(slot_x: int, slot_y: int, side: int, size: tuple[int, int]) -> Rect:
    # centred across the column, at the top of its row: right under its title
    return slot_x + (side - size[0]) // 2, slot_y, size[0], size[1]


def _legend_height(n_box_classes: int) -> int:
    return 0 if n_box_classes == 0 else 2 * _LEGEND_PAD + _LEGEND_LINE * (-(-n_box_classes // _LEGEND_COLS) + 1)


@functools.lru_cache(maxsize=64)
def overlay_layout(image_size: tuple[int, int], n_box_classes: int) -> OverlayLayout:
    """The layout of the overlay of an image of ``image_size = (W, H)`` with ``n_box_classes`` heatmap panels.

    The canvas is as wide for every image (the X-ray is scaled, up or down, to ``DISPLAY_MAX`` px, or the
    heatmap panel's side, on its longest side, centred in its column); rows are as high as the image is at
    that scale, so a wide image leaves no blank band (the top row keeps at least the legend's height).
    """
    width = 2 * _MARGIN + 2 * DISPLAY_MAX + _TOP_GAP + _COLORBAR_W
    display = _fit(image_size, DISPLAY_MAX)
    heat_side = (width - 2 * _MARGIN - (HEAT_COLS - 1) * _HEAT_GAP) // HEAT_COLS
    heat = _fit(image_size, heat_side)
    top = _TITLE_H + _PANEL_TITLE_H
    left_x, right_x = _MARGIN, _MARGIN + DISPLAY_MAX + _TOP_GAP
    boxes = _placed(left_x, top, DISPLAY_MAX, display)
    attention = _placed(right_x, top, DISPLAY_MAX, display)
    colorbar = (attention[0] + display[0] + 6, attention[1], _STRIP_W, display[1])
    legend_h = _legend_height(n_box_classes)
    # the legend below the X-ray of the top-left panel, outside the image
    legend = (left_x, top + display[1] + _LEGEND_GAP)
    top_h = display[1] + (_LEGEND_GAP + legend_h if legend_h else 0)
    titles = [(left_x + DISPLAY_MAX // 2, _TITLE_H), (right_x + DISPLAY_MAX // 2, _TITLE_H)]
    panels = []
    row_y = top + top_h + _ROW_GAP
    bars = []
    for k in range(n_box_classes):
        x = _MARGIN + (k % HEAT_COLS) * (heat_side + _HEAT_GAP)
        y = row_y + (k // HEAT_COLS) * (_PANEL_TITLE_H + heat[1] + _HEAT_BAR_H + _ROW_GAP)
        panels.append(_placed(x, y + _PANEL_TITLE_H, heat_side, heat))
        titles.append((x + heat_side // 2, y))
        px, py, pw, ph = panels[-1]
        bars.append((px + 14, py + ph + 3, max(1, pw - 28), 8))  # the 0 and the 1 fit at its ends
    rows = -(-n_box_classes // HEAT_COLS)
    bottom_y = row_y + rows * (_PANEL_TITLE_H + heat[1] + _HEAT_BAR_H + _ROW_GAP)
    return OverlayLayout(
        (width, bottom_y + _BOTTOM_H),
        display,
        heat,
        boxes,
        attention,
        colorbar,
        legend,
        tuple(panels),
        tuple(titles),
        (width // 2, bottom_y + 2),
        tuple(bars),
    )


# ----------------------------------------------------------------------------------------------- colours
@functools.lru_cache(maxsize=8)
def colormap_table(name: str) -> np.ndarray:
    """A matplotlib colormap as a ``(256, 3)`` uint8 table (read once per process)."""
    # lazy: matplotlib is needed for plots only
    import matplotlib

    rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
    return np.round(rgba[:, :3] * 255.0).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _tint_table(name: str, alpha: float) -> np.ndarray:
    """``(256 * 257, 3)`` uint8: row ``g * 257 + code`` is gray ``g`` under colour code ``code`` (0: none,
    ``1 + i``: entry ``i`` of colormap ``name`` at ``alpha``), so tinting a panel is a single gather."""
    lut = np.concatenate([np.zeros((1, 3)), colormap_table(name).astype(np.float64)])
    g = np.arange(256, dtype=np.float64)[:, None, None]
    mixed = g * (1.0 - alpha) + lut[None] * alpha
    mixed[:, 0] = g[:, 0]  # code 0 leaves the gray as it is
    return np.round(mixed).astype(np.uint8).reshape(256 * 257, 3)


def _codes(values: np.ndarray, lo: float, hi: float, shown: np.ndarray) -> np.ndarray:
    """Colour codes of ``values`` (``1 + `` table index for ``lo..hi``; 0 where not ``shown``) as uint16."""
    # matplotlib's rule for a 256-entry table: t in [0, 1] -> entry int(256 t), t = 1 into the last one
    t = (values - lo) * (256.0 / (hi - lo)) if hi > lo else np.zeros(values.shape, np.float32)
    t = np.where(shown, t, 0.0)  # NaN cells are not shown; keep them out of the integer cast
    codes = np.clip(t, 0, 255).astype(np.uint16) + 1
    codes[~shown] = 0
    return codes


def _tint(gray: np.ndarray, codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """RGB ``(..., h, w, 3)`` of the gray ``(h, w)`` uint8 under the colour ``codes`` ``(..., h, w)``."""
    return np.take(table, gray.astype(np.int32) * 257 + codes, axis=0)


def class_colors(box_labels: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """Box class -> its RGB colour (the k-th box class gets matplotlib's ``C{k}``)."""
    return {lab: TAB10[k % len(TAB10)] for k, lab in enumerate(box_labels)}


def _ink(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``color``."""
    return (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 150 else (255, 255, 255)


# ------------------------------------------------------------------------------------------------- text
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # one font object per thread: a FreeType face may be used by one thread at a time, and `cianet predict`
    # draws overlays in several writer threads (which a free-threaded Python runs truly at once)
    return _thread_font(size, threading.get_ident())


@functools.lru_cache(maxsize=256)
def _thread_font(size: int, thread: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    del thread  # part of the cache key only
    return ImageFont.load_default(size=size)


def _text_centered(
    draw: ImageDraw.ImageDraw,
    anchor: tuple[int, int],
    text: str,
    size: int,
    fill: tuple[int, int, int] = TEXT_COLOR,
    bold: bool = False,
    underline: bool = False,
) -> None:
    font = _font(size)
    x, y = anchor
    if bold:
        # Pillow's default font has no bold face; the text drawn twice a pixel apart reads as bold and costs
        # a quarter of a stroked outline
        x -= 1
        draw.text((x + 1, y), text, fill=fill, font=font, anchor="mt")
    draw.text((x, y), text, fill=fill, font=font, anchor="mt")
    if underline:
        x0, _, x1, y1 = draw.textbbox((x, y), text, font=font, anchor="mt")
        draw.rectangle((x0, y1 + 2, x1 + 1, y1 + 3), fill=fill)


# ------------------------------------------------------------------------------------------------ image
def _gray_u8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The gray ``image`` ``(H, W)`` in [0, 1] resized to ``size = (w, h)`` as uint8 ``(h, w)``."""
    return (np.clip(resize_gray(np.asarray(image), size), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def box_outline(box: PredictedBox, scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """The inclusive pixel rectangle ``(x0, y0, x1, y1)`` of ``box`` in the X-ray of the top-left panel
    (``scale`` from :meth:`OverlayLayout.display_scale`); its ``BOX_WIDTH`` px outline lies inside it."""
    sx, sy = scale
    x0, y0 = round(box.x * sx), round(box.y * sy)
    return x0, y0, max(x0, round((box.x + box.w) * sx) - 1), max(y0, round((box.y + box.h) * sy) - 1)


def _draw_boxes(
    panel: Image.Image,
    boxes: Sequence[PredictedBox],
    colors: dict[str, tuple[int, int, int]],
    scale: tuple[float, float],
) -> None:
    # drawn on the panel's own image, so that boxes reaching past the X-ray are clipped to it
    draw = ImageDraw.Draw(panel)
    font = _font(11)
    pw, ph = panel.size
    placed: list[tuple[int, int, int, int]] = []  # the labels drawn so far: a new one never covers them
    for b in top_boxes(boxes):
        color = colors.get(b.label, UNKNOWN_BOX_COLOR)
        x0, y0, x1, y1 = box_outline(b, scale)
        draw.rectangle((x0, y0, x1, y1), outline=color, width=BOX_WIDTH)
        text = f"{b.label} {format_probability(b.score)}"
        left, top, right, bottom = font.getbbox(text)
        tw, th = right - left, bottom - top
        # inside the box's top-left corner; moved left/up when the box ends at the panel's right/bottom edge
        tx = max(0, min(x0 + BOX_WIDTH + 1, pw - tw - 2))
        ty = max(0, min(y0 + BOX_WIDTH + 1, ph - th - 2))
        ty = _free_row(placed, tx, ty, tw, th, ph)
        placed.append((tx - 1, ty - 1, tx + tw + 1, ty + th + 1))
        draw.rectangle(placed[-1], fill=color)
        draw.text((tx - left, ty - top), text, fill=_ink(color), font=font)


def top_boxes(boxes: Sequence[PredictedBox]) -> list[PredictedBox]:
    """The highest-scoring box of each class (what the overlay draws; the JSON keeps them all)."""
    best: dict[str, PredictedBox] = {}
    for b in boxes:
        if b.label not in best or b.score > best[b.label].score:
            best[b.label] = b
    return list(best.values())


def _free_row(placed: Sequence[tuple[int, int, int, int]], tx: int, ty: int, tw: int, th: int, ph: int) -> int:
    """``ty``, moved down (then up) a label's height at a time until the label overlaps none of ``placed``."""

    def clear(y: int) -> bool:
        return all(tx + tw + 1 < a or tx - 1 > c or y + th + 1 < b or y - 1 > d for a, b, c, d in placed)

    step = th + 3
    for k in range(0, ph // step + 1):
        for y in (ty + k * step, ty - k * step):
            if 0 <= y <= ph - th - 2 and clear(y):
                return y
    return ty


def _draw_legend(
    canvas: Image.Image,
    origin: tuple[int, int],
    result: PredictionResult,
    box_labels: Sequence[str],
    colors: dict[str, tuple[int, int, int]],
) -> None:
    if not box_labels:
        return
    font, line, pad, swatch = _font(11), _LEGEND_LINE, _LEGEND_PAD, 18
    counts = {lab: sum(b.label == lab for b in result.boxes) for lab in box_labels}
    lines = [
        f"{lab}: p {format_probability(result.probabilities.get(lab))}"
        + (f" ({counts[lab]} regions, best drawn)" if counts[lab] > 1 else "")
        for lab in box_labels
    ]
    x0, y0 = origin
    col_w = DISPLAY_MAX // _LEGEND_COLS
    draw = ImageDraw.Draw(canvas)
    draw.text((x0 + pad, y0 + pad), "box classes (outline colour; p: image probability)", fill=TEXT_COLOR, font=font)
    rows = -(-len(box_labels) // _LEGEND_COLS)
    for i, (lab, text) in enumerate(zip(box_labels, lines)):  # down the first column, then the second
        x, y = x0 + (i // rows) * col_w, y0 + pad + (i % rows + 1) * line
        draw.rectangle((x + pad, y + 2, x + pad + swatch, y + 10), outline=colors[lab], width=2)
        draw.text((x + 2 * pad + swatch, y), text, fill=TEXT_COLOR, font=font)


def _attention_codes(
    attention: np.ndarray,
    params: Sequence[float],
    size: tuple[int, int],
) -> tuple[np.ndarray, float, float]:
    """Inferno codes of ``dM`` in the display frame and the colour bar's ``(min, max)``."""
    att = np.asarray(attention, np.float32)
    # 0 is what lies outside the aligned image once mapped, so dM's exact zeros stay transparent as well (as
    # matplotlib masked them); coding the small grid before mapping it spares a float pass over the display
    shown = np.isfinite(att) & (att != 0.0)
    lo, hi = (float(att[shown].min()), float(att[shown].max())) if shown.any() else (0.0, 0.0)
    return masks_to_original(_codes(att, lo, hi, shown)[None], params, size)[0], lo, hi


def _heat_codes(heatmaps: np.ndarray, params: Sequence[float], size: tuple[int, int]) -> np.ndarray:
    """Jet codes ``(C, h, w)`` of the heatmaps in the frame of the heatmap panels (one mapping for all)."""
    heat = np.asarray(heatmaps, np.float32)
    return masks_to_original(_codes(heat, 0.0, 1.0, heat >= HEAT_FLOOR), params, size)  # NaN >= floor: False


def encode_png(rgb: np.ndarray, level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` ``(h, w, 3)`` uint8.

    Pillow's encoder tries all five PNG filters on every row and took longer than the drawing itself. Here
    every row gets the "up" filter (the overlay's panels are smooth down their columns and its margins
    constant), computed by numpy, then one zlib pass at its fastest level.
    """
    h, w, _ = rgb.shape
    rows = np.ascontiguousarray(rgb, np.uint8).reshape(h, w * 3)
    data = np.empty((h, w * 3 + 1), np.uint8)
    data[:, 0] = 2  # "up"; the first row's row above is zeros
    data[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=data[1:, 1:])  # uint8 wraps around, as PNG's filter arithmetic does

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))

    # 8 bits a sample, truecolour, deflate, the standard per-row filter method, no interlace
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(data.tobytes(), level))
        + chunk(b"IEND", b"")
    )


def render_canvas(
    image: np.ndarray, result: PredictionResult, box_labels: Sequence[str], thresholds: dict[str, float] | None = None
) -> Image.Image:
    """The overlay of ``result`` as an RGB image: what :func:`render_overlay` encodes (:func:`overlay_layout`)."""
    thresholds = thresholds or {}
    h, w = image.shape
    lay = overlay_layout((int(w), int(h)), len(box_labels))
    params = tuple(result.align_params) if result.align_params is not None else IDENTITY_PARAMS
    colors = class_colors(box_labels)
    canvas = Image.new("RGB", lay.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    heat_codes = (
        None if not box_labels else _heat_codes(np.asarray(result.heatmaps)[: len(box_labels)], params, lay.heat_size)
    )
    gray = _gray_u8(image, lay.display_size)
    gray_rgb = Image.fromarray(gray, mode="L").convert("RGB")
    panel = gray_rgb.copy()
    _draw_boxes(panel, result.boxes, colors, lay.display_scale((w, h)))
    canvas.paste(panel, lay.boxes_panel[:2])
    _draw_legend(canvas, lay.legend, result, box_labels, colors)
    name = "".join(c if c.isprintable() else "?" for c in Path(result.source).name)  # a newline in a file name
    _text_centered(draw, lay.titles[0], f"{name}: {len(result.boxes)} box(es)", 13)

    if result.attention is not None:
        codes, lo, hi = _attention_codes(result.attention, params, lay.display_size)
        canvas.paste(
            Image.fromarray(_tint(gray, codes, _tint_table("inferno", ATTENTION_ALPHA))), lay.attention_panel[:2]
        )
        cx, cy, cw, ch = lay.colorbar
        strip = colormap_table("inferno")[np.linspace(255, 0, ch).round().astype(np.intp)]  # max at the top
        canvas.paste(Image.fromarray(np.ascontiguousarray(np.repeat(strip[:, None], cw, axis=1))), (cx, cy))
        draw.rectangle((cx - 1, cy - 1, cx + cw, cy + ch), outline=TEXT_COLOR)
        draw.text((cx + cw + 4, cy), f"{hi:.2f}", fill=TEXT_COLOR, font=_font(10), anchor="lt")
        draw.text((cx + cw + 4, cy + ch), f"{lo:.2f}", fill=TEXT_COLOR, font=_font(10), anchor="lb")
        _text_centered(draw, lay.titles[1], f"contrast attention dM (negative: {result.negative})", 13)
    else:
        canvas.paste(gray_rgb, lay.attention_panel[:2])
        _text_centered(draw, lay.titles[1], "no attention map (baseline model)", 13)

    if heat_codes is not None:
        small = np.asarray(Image.fromarray(gray, mode="L").resize(lay.heat_size, Image.Resampling.BOX))
        heat = _tint(small, heat_codes, _tint_table("jet", HEAT_ALPHA))
        for k, lab in enumerate(box_labels):
            canvas.paste(Image.fromarray(heat[k]), lay.heat_panels[k][:2])
            _heat_bar(canvas, draw, lay.heat_bars[k])
            p = result.probabilities.get(lab, float("nan"))
            hit = p >= thresholds.get(lab, 0.5)
            _text_centered(
                draw, lay.titles[2 + k], f"{lab} p {format_probability(p)}", 12, colors[lab], bold=hit, underline=hit
            )

    others = [lab for lab in result.probabilities if lab not in box_labels]
    _text_centered(
        draw, lay.bottom_line, "  ".join(f"{lab} {format_probability(result.probabilities[lab])}" for lab in others), 12
    )
    banner = domain_banner(result)
    if banner:  # the title line becomes a red warning: a synthetic-trained model on an image of another kind
        draw.rectangle((0, 0, lay.size[0] - 1, _TITLE_H - 4), fill=BANNER_COLOR)
        _text_centered(draw, (lay.size[0] // 2, 6), banner, 14, (255, 255, 255), bold=True)
    else:
        _text_centered(draw, (lay.size[0] // 2, 6), "cianet prediction (heatmaps: cell probability, jet 0..1)", 16)
    return canvas


def _heat_bar(canvas: Image.Image, draw: ImageDraw.ImageDraw, rect: Rect) -> None:
    """A heatmap panel's colour bar: jet from probability 0 (left) to 1 (right), as the panel tints cells
    (HEAT_FLOOR and below are left untinted)."""
    x, y, w, h = rect
    strip = colormap_table("jet")[np.linspace(0, 255, w).round().astype(np.intp)]  # (w, 3)
    canvas.paste(Image.fromarray(np.ascontiguousarray(np.repeat(strip[None], h, axis=0))), (x, y))
    draw.rectangle((x - 1, y - 1, x + w, y + h), outline=TEXT_COLOR)
    draw.text((x - 3, y + h // 2), "0", fill=TEXT_COLOR, font=_font(10), anchor="rm")
    draw.text((x + w + 3, y + h // 2), "1", fill=TEXT_COLOR, font=_font(10), anchor="lm")


def domain_banner(result: PredictionResult) -> str:
    """The out-of-domain warning of ``result`` (its ``domain``, :mod:`cianet.inference.domain`), "" when none."""
    dom = result.domain or {}
    if dom.get("in_domain") is not False:
        return ""
    return (
        f"OUT OF DOMAIN: model trained on {dom.get('training_data', '?')} images only; "
        "its outputs on this image mean nothing"
    )


def render_overlay(
    image: np.ndarray,
    result: PredictionResult,
    box_labels: list[str],
    thresholds: dict[str, float] | None = None,
    dpi: int = 90,
) -> bytes:
    """The overlay figure of ``result`` over its gray ``image`` ``(H, W)`` [0, 1] as RGB PNG bytes.

    Args:
        image: the X-ray as predicted, in the pixel frame of its file (the boxes' frame).
        result: its prediction; ``heatmaps[k]`` is the heatmap of ``box_labels[k]``.
        box_labels: the box classes, in heatmap order.
        thresholds: class -> probability from which a class counts as found (default 0.5 each).
        dpi: unused, kept for callers of the former matplotlib figure: the canvas has a fixed size in pixels
            (:func:`overlay_layout`).
    """
    del dpi
    return encode_png(np.asarray(render_canvas(image, result, box_labels, thresholds)))


def write_overlay(
    path: str | Path,
    image: np.ndarray,
    result: PredictionResult,
    box_labels: list[str],
    thresholds: dict[str, float] | None = None,
) -> None:
    """Render and write the overlay PNG atomically."""
    atomic_write_bytes(path, render_overlay(image, result, box_labels, thresholds))

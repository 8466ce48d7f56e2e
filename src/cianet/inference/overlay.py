"""Overlay figures of a prediction: the X-ray with its boxes, the attention map dM and per-class heatmaps.

Layout (matplotlib, Agg canvas, no pyplot global state): top left the X-ray with the predicted boxes (one
colour per box class, label and score on each box, a legend with the image probabilities); top right the
normalized contrast attention ``dM`` over the X-ray; below, one panel per box class with its cell
probabilities over the X-ray (titled with the class probability; a box class above its threshold is shown in
bold). Grids are mapped back through the alignment into the image frame (``mask_to_original``), so every
panel is in the pixel frame of the image file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cianet.inference.predictor import PredictionResult

DISPLAY_MAX = 512  # longest side of the displayed X-ray (the figure is ~1100 px wide)
IDENTITY = (0.0, 0.0, 1.0, 1.0, 0.0)


def _to_frame(grid: np.ndarray, params, size: tuple[int, int]) -> np.ndarray:
    """A float grid ``(g, g)`` of the aligned frame -> ``(H', W')`` of the image frame at display size."""
    from cianet.models.alignment import mask_to_original

    return mask_to_original(np.asarray(grid, np.float32), params if params is not None else IDENTITY, size)


def _display(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Downscale ``(H, W)`` for display; returns the image and its display ``(W', H')``."""
    from cianet.data.io import resize_gray
    from PIL import Image

    h, w = image.shape
    f = min(1.0, DISPLAY_MAX / max(h, w))
    dw, dh = max(1, round(w * f)), max(1, round(h * f))
    if (dw, dh) == (w, h):
        return image, (w, h)
    if dw == dh:
        return resize_gray(image, dw), (dw, dh)
    pil = Image.fromarray(np.ascontiguousarray(image, np.float32)).resize((dw, dh), Image.Resampling.BOX)
    return np.asarray(pil, np.float32), (dw, dh)


def render_overlay(image: np.ndarray, result: PredictionResult, box_labels: list[str],
                   thresholds: dict[str, float] | None = None, dpi: int = 90) -> bytes:
    """The overlay figure of ``result`` over its gray ``image`` ``(H, W)`` [0, 1] as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    thresholds = thresholds or {}
    h, w = image.shape
    shown, dsize = _display(image)
    extent = (0, w, h, 0)  # draw everything in the file's pixel frame
    colors = {lab: f"C{k}" for k, lab in enumerate(box_labels)}
    heat_rows = max(1, -(-len(box_labels) // 4))  # 4 heatmaps a row: 2 rows for NIH's 8 box classes
    fig = Figure(figsize=(12, 12.4 * (2 + heat_rows) / 4), dpi=dpi)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2 + heat_rows, 4, hspace=0.28, wspace=0.08, top=0.95, bottom=0.06, left=0.02, right=0.98)

    ax = fig.add_subplot(gs[0:2, 0:2])
    ax.imshow(shown, cmap="gray", vmin=0, vmax=1, extent=extent)
    for b in result.boxes:
        c = colors.get(b.label, "yellow")
        ax.add_patch(Rectangle((b.x, b.y), b.w, b.h, fill=False, edgecolor=c, linewidth=2))
        ax.text(b.x + 2, b.y + 2, f"{b.label} {b.score:.2f}", color="white", fontsize=8, va="top",
                bbox={"facecolor": c, "alpha": 0.75, "pad": 1, "edgecolor": "none"})
    handles = [Patch(facecolor="none", edgecolor=colors[lab], linewidth=2,
                     label=f"{lab}: p={result.probabilities[lab]:.2f}") for lab in box_labels]
    ax.legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.8, title="box classes", title_fontsize=7)
    ax.set_title(f"{Path(result.source).name}: {len(result.boxes)} box(es)", fontsize=10)
    ax.set_axis_off()

    ax = fig.add_subplot(gs[0:2, 2:4])
    ax.imshow(shown, cmap="gray", vmin=0, vmax=1, extent=extent)
    if result.attention is not None:
        att = _to_frame(result.attention, result.align_params, dsize)
        im = ax.imshow(np.ma.masked_equal(att, 0.0), cmap="inferno", alpha=0.5, extent=extent)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.01).ax.tick_params(labelsize=7)
        ax.set_title(f"contrast attention dM (negative: {result.negative})", fontsize=10)
    else:
        ax.set_title("no attention map (baseline model)", fontsize=10)
    ax.set_axis_off()

    for k, lab in enumerate(box_labels):
        ax = fig.add_subplot(gs[2 + k // 4, k % 4])
        ax.imshow(shown, cmap="gray", vmin=0, vmax=1, extent=extent)
        heat = _to_frame(result.heatmaps[k], result.align_params, dsize)
        # Cells below 5 % stay transparent so the anatomy under an empty heatmap remains visible.
        ax.imshow(np.ma.masked_less(heat, 0.05), cmap="jet", vmin=0, vmax=1, alpha=0.45, extent=extent)
        p = result.probabilities[lab]
        hit = p >= thresholds.get(lab, 0.5)
        ax.set_title(f"{lab} p={p:.2f}", fontsize=9, color=colors[lab], fontweight="bold" if hit else "normal")
        ax.set_axis_off()
    others = [lab for lab in result.probabilities if lab not in box_labels]
    fig.text(0.5, 0.015, "  ".join(f"{lab} {result.probabilities[lab]:.2f}" for lab in others),
             ha="center", fontsize=8)
    fig.suptitle("cianet prediction (heatmaps: cell probability, jet 0..1)", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write_overlay(path: str | Path, image: np.ndarray, result: PredictionResult, box_labels: list[str],
                  thresholds: dict[str, float] | None = None) -> None:
    """Render and write the overlay PNG atomically."""
    from cianet.utils.atomic import atomic_write_bytes

    atomic_write_bytes(path, render_overlay(image, result, box_labels, thresholds))

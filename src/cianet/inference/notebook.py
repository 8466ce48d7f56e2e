"""The Python API's conveniences for notebooks: a result's heatmaps in the image frame, a DataFrame, its
overlay as ``_repr_png_``/``show()``, and the one out-of-domain warning per Predictor.

A result made by the Python API (``Predictor.predict``, ``predict_batch``, ``predict_folder``) keeps an 8-bit
copy of its image at most ``PREVIEW_MAX`` px a side (``result.image``), enough to draw the overlay without
holding every full-size X-ray; boxes stay in the pixels of the image file and are scaled for the drawing.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from cianet.data.io import resize_gray, to_uint8
from cianet.errors import UsageError
from cianet.inference.domain import domain_warning
from cianet.inference.overlay import encode_png, render_canvas
from cianet.models.alignment import IDENTITY_PARAMS, masks_to_original

PREVIEW_MAX = 512


class DomainWarning(UserWarning):
    """A model trained on synthetic images (cianet synth) was given an image of another kind."""


def compact(result):
    """``result`` with its kept image replaced by an 8-bit preview of at most PREVIEW_MAX px a side."""
    img = result.image
    if img is None or img.dtype == np.uint8:
        return result
    h, w = img.shape
    f = min(1.0, PREVIEW_MAX / max(h, w))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    small = img if f == 1.0 else resize_gray(np.asarray(img, np.float32), size)
    return dataclasses.replace(result, image=to_uint8(np.clip(small, 0.0, 1.0)))


def warn_out_of_domain(predictor, results) -> None:
    """One DomainWarning per Predictor, the first time one of its results is out of the training domain."""
    if getattr(predictor, "_domain_warned", False):
        return
    bad = [r for r in results if (r.domain or {}).get("in_domain") is False]
    if bad:
        predictor._domain_warned = True
        warnings.warn(domain_warning(predictor.training_data, len(bad), len(results)), DomainWarning, stacklevel=4)


def result_heatmap(result, label: str | None, frame: str) -> np.ndarray:
    """See :meth:`cianet.inference.predictor.PredictionResult.heatmap`."""
    labels = list(result.box_labels)
    if label is not None and label not in labels:
        raise UsageError(f"{label!r} is not a box class of this model ({', '.join(labels)})")
    if frame == "grid":
        grids = np.asarray(result.heatmaps)[: len(labels)]
        return grids.max(axis=0) if label is None else grids[labels.index(label)]
    if frame != "image":
        raise UsageError(f"frame must be 'image' or 'grid', got {frame!r}")
    # as cianet predict's .heatmaps.npz (cianet.inference.result_files), whose module this one cannot import
    w, h = result.image_size
    f = min(1.0, PREVIEW_MAX / max(w, h))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    params = result.align_params if result.align_params is not None else IDENTITY_PARAMS
    heat = np.clip(masks_to_original(np.asarray(result.heatmaps[: len(labels)], np.float32), params, size), 0.0, 1.0)
    return heat.max(axis=0) if label is None else heat[labels.index(label)]


def result_dataframe(result):
    """One row per class: ``class``, ``probability``, ``box_class``, ``boxes``, ``best_box_score``."""
    # lazy: pandas is optional: only this notebook helper uses it
    import pandas as pd

    rows = []
    for lab, p in result.probabilities.items():
        boxes = [b for b in result.boxes if b.label == lab]
        rows.append(
            {
                "class": lab,
                "probability": float(p),
                "box_class": lab in result.box_labels,
                "boxes": len(boxes),
                "best_box_score": max((b.score for b in boxes), default=float("nan")),
            }
        )
    df = pd.DataFrame(rows)
    df.attrs["source"] = result.source
    return df


def _for_drawing(result) -> tuple[np.ndarray, Any]:
    """The kept image as float [0, 1] and the result with its boxes scaled into that image's pixels."""
    if result.image is None:
        raise UsageError(
            f"{result.source}: no image kept with this result (made by cianet predict's batch code); "
            "use Predictor.predict to draw it"
        )
    img = np.asarray(result.image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    h, w = img.shape
    fx, fy = w / result.image_size[0], h / result.image_size[1]
    boxes = [dataclasses.replace(b, x=b.x * fx, y=b.y * fy, w=b.w * fx, h=b.h * fy) for b in result.boxes]
    return img, dataclasses.replace(result, boxes=boxes, image_size=(w, h))


def overlay_image(result):
    """The overlay of a result made by the Python API, as a PIL image (see the module docstring)."""
    img, scaled = _for_drawing(result)
    return render_canvas(img, scaled, list(result.box_labels))


def overlay_png(result) -> bytes | None:
    """``_repr_png_``: the overlay's PNG bytes, None when no image was kept (IPython then shows the repr)."""
    if result.image is None:
        return None
    return encode_png(np.asarray(overlay_image(result)))


def show(result) -> None:
    """Display the overlay inline under IPython, else with PIL's viewer."""
    img = overlay_image(result)
    try:
        # lazy: IPython exists only in a notebook
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(img)
            return
    except ImportError:
        pass
    img.show()

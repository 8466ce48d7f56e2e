"""Results for people to read: mean and std over folds or seeds, and the paper's markdown tables."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cianet.labels import BOX_LABELS, LABELS


def mean_std_results(results: Sequence[Mapping[str, Any]]) -> tuple[dict, dict]:
    """Element-wise mean and (population) std over several result dicts of the same layout (e.g. 5 folds).

    Works for :func:`localization_accuracy` (nested) and :func:`auc_per_class` (flat) results; NaN entries are
    ignored (a value NaN in every fold stays NaN).
    """
    if not results:
        raise ValueError("no results to aggregate")

    def agg(items: Sequence[Any]) -> tuple[Any, Any]:
        if isinstance(items[0], Mapping):
            keys = list(items[0].keys())
            pairs = {k: agg([it[k] for it in items]) for k in keys}
            return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}
        arr = np.asarray(items, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            return float("nan"), float("nan")
        return float(arr.mean()), float(arr.std())

    return agg(list(results))


def _cell(value: float, std: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std:.{digits}f}"
    return text


def format_localization_table(
    results_by_model: Mapping[str, Mapping[str, Mapping[str, float]]],
    thresholds: Sequence[float | str] | None = None,
    std_by_model: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    digits: int = 2,
    class_names: Sequence[str] | None = None,
) -> str:
    """Markdown table in the paper's layout: rows T(IoU) x model, columns the box classes and "Mean".

    Args:
        results_by_model: ``{model: localization_accuracy(...) result}``.
        thresholds: which T(IoU) rows (floats or their ``f"{t:g}"`` keys); default all in the first model.
        std_by_model: optional ``{model: std result}`` (e.g. from :func:`mean_std_results`) -> "m ± s" cells.
        class_names: the columns; default the classes of the first model's results (NIH: the 8 box classes).
    """
    if not results_by_model:
        raise ValueError("no results to format")
    first = next(iter(results_by_model.values()))
    if class_names is None:
        row = next(iter(first.values()), {})
        class_names = [c for c in row if c != "Mean"] or list(BOX_LABELS)
    keys = [t if isinstance(t, str) else f"{t:g}" for t in thresholds] if thresholds else list(first.keys())
    header = ["T(IoU)", "Model", *class_names, "Mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in keys:
        for i, (model, res) in enumerate(results_by_model.items()):
            if key not in res:
                raise ValueError(f"model {model!r} has no result at T(IoU) = {key}")
            std_row = (std_by_model or {}).get(model, {}).get(key, {})
            cells = [_cell(res[key].get(c, float("nan")), std_row.get(c), digits) for c in (*class_names, "Mean")]
            lines.append("| " + " | ".join([key if i == 0 else "", model, *cells]) + " |")
    return "\n".join(lines) + "\n"


def format_auc_table(
    results_by_model: Mapping[str, Mapping[str, float]],
    std_by_model: Mapping[str, Mapping[str, float]] | None = None,
    class_names: Sequence[str] | None = None,
    digits: int = 2,
) -> str:
    """Markdown table of AUCs: one row per model, columns the classes (default: those of the first model's
    result; NIH: the 14) and "Mean" (as Table 4)."""
    if not results_by_model:
        raise ValueError("no results to format")
    if class_names is None:
        class_names = [c for c in next(iter(results_by_model.values())) if c != "Mean"] or list(LABELS)
    header = ["Model", *class_names, "Mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, res in results_by_model.items():
        std = (std_by_model or {}).get(model, {})
        cells = [_cell(res.get(c, float("nan")), std.get(c), digits) for c in (*class_names, "Mean")]
        lines.append("| " + " | ".join([model, *cells]) + " |")
    return "\n".join(lines) + "\n"

"""Plots of an evaluated run (``cianet evaluate``): ROC and precision-recall curves per class, localization
accuracy against T(IoU), and the training loss curve from ``log.jsonl``.

Each figure is drawn on a matplotlib Agg canvas (no pyplot global state) and returned as PNG bytes;
:func:`write_evaluation_plots` writes them into the run folder and returns their file names.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cianet.metrics import curve_area, precision_recall_points, roc_points
from cianet.utils.atomic import atomic_write_bytes

PLOT_FILES = {"roc": "roc.png", "pr": "pr.png", "localization": "localization.png", "loss": "loss.png"}


# Room (inches: left, bottom, right, top) around the axes for tick labels, axis labels and the title. Fixed
# margins let savefig draw a figure once: bbox_inches="tight" draws it twice (once to measure it), which was
# half the cost of every plot.
MARGINS = (0.62, 0.54, 0.21, 0.31)
# zlib level 3, not Pillow's 6: half the time to encode a PNG, and files within a few percent of the size
PNG_OPTIONS = {"compress_level": 3}


def set_margins(fig, margins: Sequence[float]) -> None:
    """Place ``fig``'s subplot grid ``margins`` (inches: left, bottom, right, top) inside its edges."""
    left, bottom, right, top = margins
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, bottom=bottom / height, right=1 - right / width, top=1 - top / height)


def _figure(axes_width: float = 5.42, axes_height: float = 3.85, margins: Sequence[float] = MARGINS):
    """A figure whose subplot grid is ``axes_width`` x ``axes_height`` inches with ``margins`` around it."""
    # lazy: matplotlib is needed for plots only
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    left, bottom, right, top = margins
    fig = Figure(figsize=(left + axes_width + right, bottom + axes_height + top), dpi=100)
    FigureCanvasAgg(fig)
    set_margins(fig, margins)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs=PNG_OPTIONS)
    return buf.getvalue()


def _colors(n: int) -> list:
    # lazy: matplotlib is needed for plots only
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(k % 20) for k in range(n)]


def _class_curves(ax, scores: np.ndarray, labels: np.ndarray, names: Sequence[str], curve) -> int:
    """Draw ``curve(y, s) -> (x, y, value)`` for each class whose labels hold both values; returns how many."""
    drawn = 0
    for k, (name, color) in enumerate(zip(names, _colors(len(names)))):
        y = labels[:, k]
        if y.min() == y.max():
            continue
        xs, ys, value = curve(y, scores[:, k])
        ax.plot(xs, ys, color=color, lw=1.3, label=f"{name} {value:.3f}")
        drawn += 1
    return drawn


def roc_figure(scores: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> bytes | None:
    """One ROC curve per class with both label values present (legend: AUC); None when there is none."""

    def roc(y, s):
        fpr, tpr, _ = roc_points(y, s)
        return fpr, tpr, curve_area(fpr, tpr)  # roc_auc's own sum, on the curve drawn (one ranking, not two)

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    if not _class_curves(ax, scores, labels, names, roc):
        return None
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="ROC per class (legend: AUC)",
    )
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    return _png(fig)


def pr_figure(scores: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> bytes | None:
    """One precision-recall curve per class with both label values present (legend: average precision);
    None when there is none."""

    def pr(y, s):
        precision, recall, _ = precision_recall_points(y, s)
        # average_precision_score's step-function sum, on the curve drawn (one ranking, not two)
        return recall, precision, max(0.0, -float(np.sum(np.diff(recall) * precision[:-1])))

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    if not _class_curves(ax, scores, labels, names, pr):
        return None
    ax.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="Precision-recall per class (legend: average precision)",
    )
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    return _png(fig)


def localization_figure(localization: Mapping[str, Mapping[str, float]]) -> bytes | None:
    """Localization accuracy of each box class and their mean against T(IoU); None without thresholds."""
    ts = sorted(localization, key=float)
    if not ts:
        return None
    classes = [c for c in localization[ts[0]] if c != "Mean"]
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    x = [float(t) for t in ts]

    def series(c: str) -> list[float]:  # None (JSON) and NaN (in memory) both mean "no box of the class"
        return [np.nan if localization[t].get(c) is None else float(localization[t][c]) for t in ts]

    for c, color in zip(classes, _colors(len(classes))):
        if np.isnan(series(c)).all():  # no box of this class in the test set
            continue
        ax.plot(x, series(c), marker="o", ms=3, lw=1.2, color=color, label=c)
    if "Mean" in localization[ts[0]]:
        ax.plot(x, series("Mean"), marker="s", ms=4, lw=2.5, color="black", label="Mean")
    ax.set(
        xlabel="T(IoU)",
        ylabel="localization accuracy",
        ylim=(0, 1.01),
        xticks=x,
        title="Localization accuracy against T(IoU)",
    )
    ax.legend(fontsize=7, ncol=3)
    return _png(fig)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (lines that are not JSON objects are skipped: a killed run's last
    line may be torn)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def loss_series(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """``{"step": (x, loss), "epoch": (x, train_loss), "val_auc": (x, auc)}`` with x in epochs.

    A step record ``{"event": "step", "epoch": e, "step": s, "loss"}`` sits at ``e + s / n_e`` where ``n_e`` is
    one more than the last step logged in epoch ``e``; an epoch record's mean training loss sits at ``e + 1``
    (the end of that epoch).
    """
    steps = [r for r in records if r.get("event") == "step" and isinstance(r.get("loss"), (int, float))]
    last: dict[int, int] = {}
    for r in steps:
        last[int(r["epoch"])] = max(last.get(int(r["epoch"]), 0), int(r["step"]))
    out: dict[str, tuple[list[float], list[float]]] = {"step": ([], []), "epoch": ([], []), "val_auc": ([], [])}
    for r in steps:
        e = int(r["epoch"])
        out["step"][0].append(e + int(r["step"]) / (last[e] + 1))
        out["step"][1].append(float(r["loss"]))
    for r in records:
        if r.get("event") != "epoch":
            continue
        e = int(r["epoch"]) + 1
        if isinstance(r.get("train_loss"), (int, float)):
            out["epoch"][0].append(e)
            out["epoch"][1].append(float(r["train_loss"]))
        if isinstance(r.get("val_auc_mean"), (int, float)):
            out["val_auc"][0].append(e)
            out["val_auc"][1].append(float(r["val_auc_mean"]))
    return out


def loss_figure(log_path: str | Path) -> bytes | None:
    """The training loss (every logged step, and each epoch's mean) and the validation AUC when logged."""
    path = Path(log_path)
    if not path.is_file():
        return None
    s = loss_series(read_log(path))
    if not s["step"][0] and not s["epoch"][0]:
        return None
    # wider on the left for losses' longer tick labels (up to 6 digits: larger ones are written 1e6), on the
    # right for the AUC's axis
    fig = _figure(5.42, 3.08, (0.9, 0.54, 0.62 if s["val_auc"][0] else 0.21, 0.31))
    ax = fig.add_subplot(1, 1, 1)
    if s["step"][0]:
        ax.plot(*s["step"], color="C0", lw=0.8, alpha=0.6, label="loss (logged steps)")
    if s["epoch"][0]:
        ax.plot(*s["epoch"], color="C0", marker="o", lw=2, label="mean training loss of the epoch")
    ax.set(xlabel="epoch", ylabel="loss", title="Training loss")
    handles, names = ax.get_legend_handles_labels()
    if s["val_auc"][0]:
        ax2 = ax.twinx()
        ax2.plot(*s["val_auc"], color="C3", marker="s", lw=1.5, label="validation mean AUC")
        ax2.set(ylabel="validation mean AUC", ylim=(0, 1))
        h2, n2 = ax2.get_legend_handles_labels()
        handles, names = handles + h2, names + n2
    ax.legend(handles, names, fontsize=8, loc="upper right")
    return _png(fig)


def validation_curves_figure(series: Mapping[str, tuple[Sequence[int], Sequence[float], Sequence[float]]]) -> bytes:
    """Validation mean AUC and localization accuracy at T(IoU) 0.5 per epoch, one line per run
    (``{name: (epochs, auc, loc)}``)."""
    fig = _figure(6.2, 2.31, (0.6, 0.54, 0.1, 0.29))
    axes = [fig.add_subplot(1, 2, k) for k in (1, 2)]
    for name, (epochs, auc, loc) in series.items():
        axes[0].plot(epochs, auc, marker="o", label=name)
        axes[1].plot(epochs, loc, marker="o", label=name)
    for ax, title in zip(axes, ("validation mean AUC", "validation loc. acc. T(IoU)=0.5"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _png(fig)


def write_evaluation_plots(run_dir: str | Path, metrics: Mapping[str, Any], names: Sequence[str]) -> dict[str, str]:
    """Draw the plots of an evaluated run into ``run_dir``; ``{kind: file name}`` of those written.

    ``metrics`` needs ``scores`` and ``labels`` (``evaluate(..., keep_predictions=True)``) for ROC and PR and
    ``localization`` for the T(IoU) curve; the loss curve comes from ``run_dir/log.jsonl``.
    """
    run_dir = Path(run_dir)
    figures: dict[str, bytes | None] = {}
    if "scores" in metrics and len(metrics["scores"]):
        # ranked by the evidence where present, as metrics.json's AUCs (scores saturate at 1.0 and tie)
        ranks = metrics["evidence"] if metrics.get("evidence") is not None else metrics["scores"]
        scores, labels = np.asarray(ranks), np.asarray(metrics["labels"])
        figures["roc"] = roc_figure(scores, labels, names)
        figures["pr"] = pr_figure(scores, labels, names)
    figures["localization"] = localization_figure(metrics.get("localization") or {})
    figures["loss"] = loss_figure(run_dir / "log.jsonl")
    written = {}
    for kind, png in figures.items():
        if png is not None:
            atomic_write_bytes(run_dir / PLOT_FILES[kind], png)
            written[kind] = PLOT_FILES[kind]
    return written

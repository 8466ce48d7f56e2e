"""Learning curves of training runs: the validation metrics ``cianet train`` logs after each epoch
(``log.jsonl``, ``run.eval_every``), whether a run reached its plateau, and a figure of both.

A run has reached its plateau when its validation AUC over the last quarter of its epochs (at least the last
one) rose by less than :data:`PLATEAU_GAIN` above the best value before it: more epochs would not have bought
much. Judged on the validation images only; the test images are scored once, after the last epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cianet.evaluation.plots import read_log, validation_curves_figure
from cianet.utils.atomic import atomic_write_bytes

#: validation-AUC gain over the last quarter of the epochs below which a run counts as on its plateau
PLATEAU_GAIN = 0.01
#: a run whose validation AUC never left 0.5 +- this did not learn (a flat curve at chance is no plateau)
CHANCE_BAND = 0.02


@dataclass(frozen=True)
class Curve:
    """Per-epoch validation metrics of one run (epochs 1-based; NaN where an epoch was not validated)."""

    epochs: tuple[int, ...]
    auc: tuple[float, ...]
    loc: tuple[float, ...]  # mean localization accuracy at T(IoU) 0.5
    loss: tuple[float, ...]  # training loss


def read_curve(run_dir: Path) -> Curve | None:
    """The run's validated epochs from its ``log.jsonl`` (the last record of an epoch wins after a resume);
    None when it has none (no validation split, or ``run.eval_every`` 0 before the last epoch)."""
    try:
        records = read_log(Path(run_dir) / "log.jsonl")  # skips a line torn by a kill
    except OSError:
        return None
    rows = {int(r["epoch"]) + 1: r for r in records if r.get("event") == "epoch" and r.get("val_auc_mean") is not None}
    if not rows:
        return None
    eps = tuple(sorted(rows))

    def num(rec: dict, key: str) -> float:
        v = rec.get(key)
        return float("nan") if v is None else float(v)

    return Curve(
        eps,
        tuple(num(rows[e], "val_auc_mean") for e in eps),
        tuple(num(rows[e], "val_loc_mean_0.5") for e in eps),
        tuple(num(rows[e], "train_loss") for e in eps),
    )


def _finite(values: tuple[float, ...]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _tail(n: int) -> int:
    """The last quarter of ``n`` validated epochs, at least one."""
    return max(1, n // 4)


def plateau_gain(values: tuple[float, ...]) -> float | None:
    """How much the last quarter of ``values`` (at least one) rose above the best value before it; None with
    fewer than 2 finite values."""
    vals = _finite(values)
    if len(vals) < 2:
        return None
    tail = _tail(len(vals))
    return max(vals[-tail:]) - max(vals[:-tail])


def plateau_sentence(name: str, curve: Curve | None) -> str:
    if curve is None:
        return f"{name}: no validation curve (the run has no validation split)."
    gain = plateau_gain(curve.auc)
    if gain is None:
        return f"{name}: validated on fewer than 2 epochs, no plateau judged."
    finite = _finite(curve.auc)
    if max(abs(v - 0.5) for v in finite) <= CHANCE_BAND:
        return (
            f"{name}: did not learn (validation AUC within {CHANCE_BAND} of 0.5 after every epoch: it ranks the "
            "validation images no better than chance)."
        )
    tail = _tail(len(finite))
    last = f"validation AUC {curve.auc[0]:.3f} after epoch {curve.epochs[0]}, {curve.auc[-1]:.3f} after the last"
    if gain < PLATEAU_GAIN:
        return f"{name}: on its plateau ({last}; the last {tail} epoch(s) added {gain:+.3f} < {PLATEAU_GAIN})."
    return (
        f"{name}: still learning ({last}; the last {tail} epoch(s) added {gain:+.3f} >= {PLATEAU_GAIN}): "
        "more epochs would likely help."
    )


def figure_learning_curves(curves: dict[str, Curve | None], path: Path) -> Path | None:
    """Validation AUC and localization accuracy at T(IoU) 0.5 per epoch, one line per run, written to ``path``;
    None (and nothing written) without curves."""
    drawn = {k: (c.epochs, c.auc, c.loc) for k, c in curves.items() if c is not None}
    if not drawn:
        return None
    atomic_write_bytes(path, validation_curves_figure(drawn))
    return path

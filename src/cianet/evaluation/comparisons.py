"""Comparing runs: the mean and spread of a row over its runs, the paired difference of two rows, and the
markdown tables of both.

A paired difference is a bootstrap over test boxes (stratified by class; the folds of one seed are pooled, their
test sets being disjoint) and over seeds where there are several
(:func:`cianet.metrics.bootstrap_localization_difference`); every verdict follows from its interval. The
experiments (:mod:`cianet.experiments`) and the demo's report use these on the runs they trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cianet.errors import InputError
from cianet.metrics import (
    bootstrap_auc_difference,
    bootstrap_class_mean_difference,
    bootstrap_localization_difference,
    format_auc_table,
    format_localization_table,
    mean_std_results,
    verdict,
)
from cianet.run.scoring import read_predictions


def aggregate_folds(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and population std over folds (NaN/None entries ignored)."""

    def nan(obj):
        if isinstance(obj, dict):
            return {k: nan(v) for k, v in obj.items()}
        return float("nan") if obj is None else obj

    loc_mean, loc_std = mean_std_results([nan(f["localization"]) for f in per_fold])
    auc_mean, auc_std = mean_std_results([nan(f["auc"]) for f in per_fold])
    return {
        "folds": len(per_fold),
        "localization": loc_mean,
        "localization_std": loc_std,
        "auc": auc_mean,
        "auc_std": auc_std,
    }


def localization_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Rows T(IoU) x model, columns the 8 classes + Mean (Tables 1-3, 5, 6); "mean ± std" over several folds."""
    std = {m: r["localization_std"] for m, r in results.items() if r.get("folds", 1) > 1}
    return format_localization_table({m: r["localization"] for m, r in results.items()}, std_by_model=std or None)


def auc_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Rows model, columns the 14 classes + Mean (Table 4)."""
    std = {m: r["auc_std"] for m, r in results.items() if r.get("folds", 1) > 1}
    return format_auc_table({m: r["auc"] for m, r in results.items()}, std_by_model=std or None)


def _pooled_predictions(run_dirs: list[Path]) -> dict[str, Any]:
    """Per-box IoUs, pointing-game hits and classes, per-image evidence and labels of several runs of one seed,
    concatenated (InputError naming the run when its predictions predate the evidence)."""
    parts = [read_predictions(d, need=("evidence", "pointing")) for d in run_dirs]
    keys = ["ious", "pointing", "box_classes", "evidence", "labels"]
    if all("ious_val" in p for p in parts):  # every run chose a threshold on its validation split
        keys.append("ious_val")
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def compare_runs(
    runs_a: list[list[Path]], runs_b: list[list[Path]], thresholds=(0.1, 0.3, 0.5, 0.7), n_boot: int = 2000
) -> dict[str, Any]:
    """Paired bootstrap differences A - B. ``runs_x[s]`` are the run folders of seed ``s`` (its folds).

    Keys: each T(IoU) (the paper's p > 0.5 regions), "pointing" (the pointing game), "val 0.5" (T(IoU) = 0.5 at
    each run's validation-chosen threshold; only when every run has one) and "auc" (images ranked by evidence).
    """
    a = [_pooled_predictions(r) for r in runs_a]
    b = [_pooled_predictions(r) for r in runs_b]
    for s, (pa, pb) in enumerate(zip(a, b)):
        if not np.array_equal(pa["box_classes"], pb["box_classes"]):
            raise InputError(f"seed {s}: the two rows were tested on different boxes; they cannot be paired")
    out: dict[str, Any] = {}
    if sum(len(p["ious"]) for p in a):
        for t in thresholds:
            out[f"{t:g}"] = bootstrap_localization_difference(
                [p["ious"] for p in a],
                [p["ious"] for p in b],
                [p["box_classes"] for p in a],
                threshold=t,
                n_boot=n_boot,
            )
        out["pointing"] = bootstrap_class_mean_difference(
            [p["pointing"] for p in a], [p["pointing"] for p in b], [p["box_classes"] for p in a], n_boot=n_boot
        )
        if all("ious_val" in p for p in a + b):
            out["val 0.5"] = bootstrap_localization_difference(
                [p["ious_val"] for p in a],
                [p["ious_val"] for p in b],
                [p["box_classes"] for p in a],
                threshold=0.5,
                n_boot=n_boot,
            )
            out["val 0.5"]["metric"] = "mean localization accuracy at T(IoU) = 0.5, validation-chosen p threshold"
    out["auc"] = bootstrap_auc_difference(
        [p["evidence"] for p in a], [p["evidence"] for p in b], [p["labels"] for p in a], n_boot=n_boot
    )
    return out


def comparison_markdown(comparisons: dict[str, dict[str, Any]]) -> str:
    """One table per comparison (T(IoU) rows and AUC: A, B, A - B, 95% CI) and the verdict at T(IoU) = 0.5."""

    def f(v):
        return "n/a" if v is None else f"{v:+.3f}"

    lines = []
    for label, comp in comparisons.items():
        a_name, b_name = label.split(" - ")
        lines += [
            f"### {label}",
            "",
            f"| metric | {a_name} | {b_name} | difference | 95% CI |",
            "|---|---|---|---|---|",
        ]
        for key, r in comp.items():
            what = {
                "auc": "mean AUC (by evidence)",
                "pointing": "pointing game",
                "val 0.5": "loc. acc. T(IoU)=0.5, p threshold from val",
            }.get(key, f"loc. acc. T(IoU)={key}")
            lines.append(f"| {what} | {r['a']:.3f} | {r['b']:.3f} | {f(r['diff'])} | [{f(r['low'])}, {f(r['high'])}] |")
        main = comp.get("0.5", comp["auc"])
        lines += ["", verdict(main, what=a_name, other=b_name), ""]
    return "\n".join(lines)

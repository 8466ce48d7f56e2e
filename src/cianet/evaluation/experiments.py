"""The paper's experiments as commands: each table loops its variants (and folds), resumes, aggregates.

Every run lives in ``OUT/<variant>/fold<k>/`` (``OUT/<variant>/split/`` for table 4). A finished run (its
``metrics.json`` exists) is not run again; a started one resumes from its checkpoint. The aggregate over folds
is the mean and the (population) standard deviation, written to ``tableN.json`` and ``tableN.md``.

Choices: table 2 trains on unannotated images only and tests on all annotated images, so it has a single
run per model (folds do not apply). Table 3's 0% row tests on fold k like its 40% and 80% rows, so the three
rows are comparable (the paper's 0% row repeats Table 2). Tables 1-5 apply ``--align`` (when given) to every
row, so their rows differ only in what the table varies; table 6 turns alignment off and on per row.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cianet.config import Config
from cianet.errors import UsageError
from cianet.utils.atomic import atomic_write_json, atomic_write_text


@dataclass
class Variant:
    name: str  # row label, as in the paper
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # config section -> key -> value
    folds: bool = True


LOC80_ALL = {"protocol": {"kind": "localization", "annotated_ratio": 0.8, "unannotated_ratio": 1.0}}


def _v(name: str, *parts: dict[str, dict[str, Any]], folds: bool = True) -> Variant:
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for section, values in part.items():
            merged.setdefault(section, {}).update(values)
    return Variant(name, merged, folds)


# Tables 1-5 use --align (if given) for both models alike; table 6 sets alignment per row.
BASE = {"model": {"kind": "baseline"}}
CIA = {"model": {"kind": "cianet"}, "negatives": {"strategy": "sim"}}
NO_ALIGN = {"align": {"checkpoint": None}}


def experiment_variants(name: str, align_checkpoint: str | None = None) -> list[Variant]:
    loc = lambda a, u, only=False: {"protocol": {"kind": "localization", "annotated_ratio": a,  # noqa: E731
                                                 "unannotated_ratio": u, "unannotated_only": only}}
    if name == "table1":
        return [_v("Base", BASE, loc(0.8, 0.5)), _v("CIA-Net", CIA, loc(0.8, 0.5))]
    if name == "table2":
        return [_v("Base", BASE, loc(0.0, 1.0, True), folds=False), _v("CIA-Net", CIA, loc(0.0, 1.0, True), folds=False)]
    if name == "table3":
        rows = []
        for ratio in (0.8, 0.4, 0.0):
            pct = f"{int(ratio * 100)}%"
            rows += [_v(f"{pct} Base", BASE, loc(ratio, 1.0)), _v(f"{pct} CIA-Net", CIA, loc(ratio, 1.0))]
        return rows
    if name == "table4":
        cls = {"protocol": {"kind": "classification"}}
        return [_v("Base", BASE, cls, folds=False), _v("CIA-Net", CIA, cls, folds=False)]
    if name == "table5":
        return [_v(f"CIA-Net+{label}", CIA, LOC80_ALL, {"negatives": {"strategy": strat}})
                for label, strat in (("Canon", "canonical"), ("Rand", "random"), ("Sim", "sim"))]
    if name == "table6":
        if not align_checkpoint:
            raise UsageError("table6 compares runs with and without alignment: pass --align align.pt")
        with_align = {"align": {"checkpoint": align_checkpoint}}
        return [_v("Base", BASE, LOC80_ALL, NO_ALIGN), _v("Base+Align", BASE, LOC80_ALL, with_align),
                _v("CIA", CIA, LOC80_ALL, NO_ALIGN), _v("CIA+Align", CIA, LOC80_ALL, with_align)]
    raise UsageError(f"unknown experiment {name!r}: table1 ... table6")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def _run_config(base: Config, variant: Variant, fold: int | None, run_dir: Path) -> Config:
    cfg = copy.deepcopy(base)
    for section, values in variant.settings.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    if fold is not None:
        cfg.protocol.fold = fold
    cfg.run.out = str(run_dir)
    return cfg


def aggregate_folds(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and population std over folds (NaN/None entries ignored)."""
    from cianet.metrics import mean_std_results

    def nan(obj):
        if isinstance(obj, dict):
            return {k: nan(v) for k, v in obj.items()}
        return float("nan") if obj is None else obj

    loc_mean, loc_std = mean_std_results([nan(f["localization"]) for f in per_fold])
    auc_mean, auc_std = mean_std_results([nan(f["auc"]) for f in per_fold])
    return {"folds": len(per_fold), "localization": loc_mean, "localization_std": loc_std,
            "auc": auc_mean, "auc_std": auc_std}


def localization_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Rows T(IoU) x model, columns the 8 classes + Mean (Tables 1-3, 5, 6); "mean ± std" over several folds."""
    from cianet.metrics import format_localization_table

    std = {m: r["localization_std"] for m, r in results.items() if r.get("folds", 1) > 1}
    return format_localization_table({m: r["localization"] for m, r in results.items()}, std_by_model=std or None)


def auc_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Rows model, columns the 14 classes + Mean (Table 4)."""
    from cianet.metrics import format_auc_table

    std = {m: r["auc_std"] for m, r in results.items() if r.get("folds", 1) > 1}
    return format_auc_table({m: r["auc"] for m, r in results.items()}, std_by_model=std or None)


def run_experiment(name: str, cfg: Config, out_dir: str | Path, folds: list[int] | None = None) -> Path:
    """Run (or resume) every variant x fold of experiment ``name``; returns the path of ``<name>.md``."""
    import json

    from cianet.run.checkpoints import CHECKPOINT
    from cianet.training.loop import fit

    out_dir = Path(out_dir)
    variants = experiment_variants(name, cfg.align.checkpoint)
    folds = list(range(5)) if folds is None else folds
    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        per_fold = []
        for fold in (folds if variant.folds else [None]):
            run_dir = out_dir / _slug(variant.name) / (f"fold{fold}" if fold is not None else "split")
            if not (run_dir / "metrics.json").exists():
                fit(_run_config(cfg, variant, fold, run_dir), resume=(run_dir / CHECKPOINT).exists())
            per_fold.append(json.loads((run_dir / "metrics.json").read_text()))
        results[variant.name] = aggregate_folds(per_fold)
    atomic_write_json(out_dir / f"{name}.json", {"experiment": name, "folds": folds, "results": results})
    title = {"table1": "80% annotated + 50% unannotated", "table2": "unannotated only, tested on all annotated",
             "table3": "annotated ratio 80/40/0% with all unannotated", "table4": "AUC, 70/10/20 split",
             "table5": "negative sampling", "table6": "with and without alignment"}[name]
    body = auc_markdown(results) if name == "table4" else localization_markdown(results) + "\n\n## AUC\n\n" + auc_markdown(results)
    md = f"# {name}: {title}\n\nFolds: {folds if any(v.folds for v in variants) else 'n/a'}; mean ± std over folds.\n\n{body}\n"
    atomic_write_text(out_dir / f"{name}.md", md)
    return out_dir / f"{name}.md"

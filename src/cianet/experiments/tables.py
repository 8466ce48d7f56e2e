"""The paper's experiments as commands: each table loops its variants (and folds), resumes, aggregates.

Every run lives in ``OUT/<variant>/fold<k>/`` (``OUT/<variant>/split/`` for table 4), or
``OUT/<variant>/seed<s>/fold<k>/`` with ``--seeds``. A finished run (its ``metrics.json`` exists) is not run
again and a started one resumes from its checkpoint, but only when its saved ``config.yaml`` equals the config
the experiment would train (:func:`cianet.run.reuse.check_reusable`: otherwise the command refuses and names the
keys that differ). The aggregate over runs (folds x seeds) is the mean and the
(population) standard deviation, written to ``NAME.json`` and ``NAME.md``, with the paired differences the
table is about (CIA-Net minus Base, ...) and their 95% bootstrap confidence intervals
(:mod:`cianet.evaluation.comparisons`: over test boxes, stratified by class, the folds of one seed pooled, their
test sets being disjoint, and over seeds where there are several). Every verdict follows from its interval.

``oracle`` (phantom only) is not a table of the paper: Base and CIA-Net with the phantom's finding-free twins as
negatives (``cianet synth --twins``), on Table 1's protocol. The twins give the attention the best contrast it
can have, so it checks the mechanism apart from the pairing. Its Base rows are table1's: run both experiments
into one ``--out`` and the Base runs are trained once.

Choices: table 2 trains on unannotated images only and tests on all annotated images, so it has a single
run per model (folds do not apply). Table 3's 0% row tests on fold k like its 40% and 80% rows, so the three
rows are comparable (the paper's 0% row repeats Table 2). Tables 1-5 apply ``--align`` (when given) to every
row, so their rows differ only in what the table varies; table 6 turns alignment off and on per row.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cianet.config import CANONICAL, ORACLE, RANDOM, SIM, Config
from cianet.errors import UsageError
from cianet.evaluation.comparisons import (
    aggregate_folds,
    auc_markdown,
    compare_runs,
    comparison_markdown,
    localization_markdown,
)
from cianet.experiments.plans import EXPERIMENTS, ORACLE_EXPERIMENT
from cianet.run.checkpoints import CHECKPOINT
from cianet.run.reuse import check_reusable
from cianet.run.scoring import json_safe
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
CIA = {"model": {"kind": "cianet"}, "negatives": {"strategy": SIM}}
NO_ALIGN = {"align": {"checkpoint": None}}


def experiment_variants(name: str, align_checkpoint: str | None = None) -> list[Variant]:
    def loc(a: float, u: float, only: bool = False) -> dict[str, Any]:
        return {
            "protocol": {"kind": "localization", "annotated_ratio": a, "unannotated_ratio": u, "unannotated_only": only}
        }

    if name == "table1":
        return [_v("Base", BASE, loc(0.8, 0.5)), _v("CIA-Net", CIA, loc(0.8, 0.5))]
    if name == "table2":
        return [
            _v("Base", BASE, loc(0.0, 1.0, True), folds=False),
            _v("CIA-Net", CIA, loc(0.0, 1.0, True), folds=False),
        ]
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
        return [
            _v(f"CIA-Net+{label}", CIA, LOC80_ALL, {"negatives": {"strategy": strat}})
            for label, strat in (("Canon", CANONICAL), ("Rand", RANDOM), ("Sim", SIM))
        ]
    if name == ORACLE_EXPERIMENT:
        oracle = {"model": {"kind": "cianet"}, "negatives": {"strategy": ORACLE}}
        return [_v("Base", BASE, loc(0.8, 0.5)), _v("CIA-Net+Oracle", oracle, loc(0.8, 0.5))]
    if name == "oracle-table2":  # no boxes in training: where the paper expects the attention to matter most
        oracle = {"model": {"kind": "cianet"}, "negatives": {"strategy": ORACLE}}
        return [
            _v("Base", BASE, loc(0.0, 1.0, True), folds=False),
            _v("CIA-Net+Oracle", oracle, loc(0.0, 1.0, True), folds=False),
        ]
    if name == "table6":
        if not align_checkpoint:
            raise UsageError("table6 compares runs with and without alignment: pass --align align.pt")
        with_align = {"align": {"checkpoint": align_checkpoint}}
        return [
            _v("Base", BASE, LOC80_ALL, NO_ALIGN),
            _v("Base+Align", BASE, LOC80_ALL, with_align),
            _v("CIA", CIA, LOC80_ALL, NO_ALIGN),
            _v("CIA+Align", CIA, LOC80_ALL, with_align),
        ]
    raise UsageError(f"unknown experiment {name!r}: {', '.join(EXPERIMENTS)}")


def experiment_comparisons(name: str) -> list[tuple[str, str]]:
    """The paired differences (row A minus row B) an experiment is about."""
    if name in ("table1", "table2", "table4"):
        return [("CIA-Net", "Base")]
    if name == "table3":
        return [(f"{p} CIA-Net", f"{p} Base") for p in ("80%", "40%", "0%")]
    if name == "table5":
        return [("CIA-Net+Sim", "CIA-Net+Rand"), ("CIA-Net+Sim", "CIA-Net+Canon")]
    if name == "table6":
        return [("CIA", "Base"), ("CIA+Align", "Base+Align"), ("Base+Align", "Base"), ("CIA+Align", "CIA")]
    if name in (ORACLE_EXPERIMENT, "oracle-table2"):
        return [("CIA-Net+Oracle", "Base")]
    return []


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


TITLES = {
    "table1": "80% annotated + 50% unannotated",
    "table2": "unannotated only, tested on all annotated",
    "table3": "annotated ratio 80/40/0% with all unannotated",
    "table4": "AUC, 70/10/20 split",
    "table5": "negative sampling",
    "table6": "with and without alignment",
    ORACLE_EXPERIMENT: "the mechanism with oracle negatives (phantom twins), 80% annotated + 50% unannotated",
    "oracle-table2": "the mechanism with oracle negatives (phantom twins), unannotated only, tested on all "
    "annotated (Table 2's protocol)",
}


def _run_dir(out_dir: Path, variant: Variant, fold: int | None, seed: int | None) -> Path:
    base = out_dir / _slug(variant.name)
    if seed is not None:
        base = base / f"seed{seed}"
    return base / (f"fold{fold}" if fold is not None else "split")


def run_experiment(
    name: str, cfg: Config, out_dir: str | Path, folds: list[int] | None = None, seeds: list[int] | None = None
) -> Path:
    """Run (or resume) every variant x fold (x seed) of experiment ``name``; returns the path of ``<name>.md``."""
    # lazy: tests replace cianet.training.loop.fit
    from cianet.training.loop import fit

    out_dir = Path(out_dir)
    variants = experiment_variants(name, cfg.align.checkpoint)
    folds = list(range(5)) if folds is None else folds
    seed_list: list[int | None] = list(seeds) if seeds else [None]
    results: dict[str, dict[str, Any]] = {}
    dirs: dict[str, list[list[Path]]] = {}
    for variant in variants:
        per_run, dirs[variant.name] = [], []
        for seed in seed_list:
            seed_dirs = []
            for fold in folds if variant.folds else [None]:
                run_dir = _run_dir(out_dir, variant, fold, seed)
                run_cfg = _run_config(cfg, variant, fold, run_dir)
                if seed is not None:
                    run_cfg.run.seed = seed
                # an earlier run in the folder is reused only when trained with exactly these settings
                check_reusable(run_dir, run_cfg, what=f"experiment {name} ({variant.name})")
                if not (run_dir / "metrics.json").exists():
                    fit(run_cfg, resume=(run_dir / CHECKPOINT).exists())
                per_run.append(json.loads((run_dir / "metrics.json").read_text()))
                seed_dirs.append(run_dir)
            dirs[variant.name].append(seed_dirs)
        results[variant.name] = aggregate_folds(per_run)
    comparisons = {f"{a} - {b}": compare_runs(dirs[a], dirs[b]) for a, b in experiment_comparisons(name)}
    seeds_note = f"seeds {seeds}" if seeds else f"seed {cfg.run.seed}"
    atomic_write_json(
        out_dir / f"{name}.json",
        json_safe({"experiment": name, "folds": folds, "seeds": seeds, "results": results, "comparisons": comparisons}),
    )
    body = (
        auc_markdown(results)
        if name == "table4"
        else localization_markdown(results) + "\n\n## AUC\n\n" + auc_markdown(results)
    )
    uses_folds = any(v.folds for v in variants)
    md = (
        f"# {name}: {TITLES[name]}\n\nFolds: {folds if uses_folds else 'n/a'}; {seeds_note}; mean ± std over "
        f"runs.\n\n{body}\n\n## Paired differences (95% bootstrap confidence intervals)\n\n"
        f"{comparison_markdown(comparisons)}\n"
    )
    atomic_write_text(out_dir / f"{name}.md", md)
    return out_dir / f"{name}.md"

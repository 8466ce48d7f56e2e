"""``cianet experiment evidence``: does a healthy image found without labels make the attention find lesions?

One resumable command for the whole comparison, pre-registered in docs/method.md ("Evidence"): the same
protocol and recipe for every row, rows that differ only in what they compare, seeds the recipe was never tuned
on, and the endpoints fixed before the first run.

Rows (:data:`ROWS`): Base (Li et al.); CIA-Net with the paper's hash-nearest negative (``sim``), with a random
negative, with the canonical chest as a constant negative (separates the contrast from the extra capacity),
with the patient's own prior normal study (``prior``, other images fall back to ``sim``), ``sim`` and
``prior`` also without alignment, and the oracle (a finding-free re-acquisition of the same patient) as the
*upper bound*, never as evidence. No row reads a label, a box or a twin of a test image at test time but the
oracle, whose twin is the point of an upper bound.

Data. Without ``--data-root`` every seed gets its own phantom (``OUT/seed<s>/data``, generated with that seed,
twins for the upper bound, priors for the ``prior`` rows) with its own image cache, canonical chest,
alignment network and hash indexes, so the seeds vary the data as well as the training. With ``--data-root``
(real data) every seed trains on that data set's split of that seed; the alignment network (``--align``) and
canonical chest (``--canonical``) are then the user's.

Endpoints: localization accuracy at T(IoU) 0.1-0.7 (the paper's), the pointing game, mean AUC (tie-free,
from the MIL evidence), and the attention metric (does the largest cell of ``|M+ - M-|`` lie in a finding?)
beside an untrained CIA-Net's (the chance level of that metric on the same images and pairs). Each comparison
is a paired bootstrap over seeds and test boxes/images (:func:`cianet.evaluation.comparisons.compare_runs`);
every verdict follows from its interval.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cianet.config import CANONICAL_CHEST, Config, load_config
from cianet.data.cache import prepare_cache
from cianet.data.canonical import make_canonical
from cianet.errors import UsageError
from cianet.evaluation.comparisons import compare_runs
from cianet.evaluation.evaluate import load_run
from cianet.evaluation.negative_match import negative_match
from cianet.experiments.plans import EVIDENCE_SEEDS, PHANTOM, ROWS, TUNING_SEEDS, Row
from cianet.metrics import verdict
from cianet.phantom import generate_dataset
from cianet.run.checkpoints import CHECKPOINT, alignment_trained
from cianet.run.networks import build_network
from cianet.run.pairing import hash_data_root
from cianet.run.reuse import check_reusable
from cianet.run.scoring import evaluate, json_safe
from cianet.training.alignment import train_alignment
from cianet.utils.atomic import atomic_path, atomic_write_json, atomic_write_text
from cianet.utils.output_folders import claim_output, output_lock

EXPERIMENT = "evidence"

#: (A, B): the paired differences A - B the experiment reports
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("CIA-Net sim", "Base"),
    ("CIA-Net random", "Base"),
    ("CIA-Net canonical", "Base"),
    ("CIA-Net prior", "Base"),
    ("CIA-Net sim", "CIA-Net canonical"),
    ("CIA-Net sim", "CIA-Net random"),
    ("CIA-Net sim", "CIA-Net sim (no align)"),
    ("CIA-Net prior", "CIA-Net sim"),
    ("CIA-Net prior", "CIA-Net prior (no align)"),
    ("CIA-Net oracle (upper bound)", "Base"),
)

#: the protocol of every row on phantoms: Table 1's (80% of the annotated images with boxes, 50% of the
#: unannotated), fold 0, 10% of the training patients held out for validation (the validation-chosen threshold)
PROTOCOL = {
    "kind": "localization",
    "fold": 0,
    "annotated_ratio": 0.8,
    "unannotated_ratio": 0.5,
    "unannotated_only": False,
    "val_share": 0.1,
}

# Seconds on the reference machine (2-core Xeon with AMX, float32, one process, otherwise idle) for one phantom
# seed of the default size, measured on seed 10 of the evidence run of 2026-12-03 (docs/method.md): data (synth
# with twins, cache, canonical chest, two hash indexes), alignment, one Base run, one CIA-Net run (training, the
# validation pass and the final scoring). :func:`estimate_seconds` scales them by image count and by this
# machine's matmul rate (:func:`_machine_gflops`, 165 GFLOP/s on that machine) against the reference's.
REFERENCE_SECONDS = {"data": 30.0, "align": 140.0, "baseline": 130.0, "cianet": 215.0}
REFERENCE_MATMUL_GFLOPS = 165.0
#: the attention metric's figures (cianet.metrics.attention_in_boxes)
ATTENTION_KEYS = ("hit_rate", "mass_in_boxes", "area_share")


@dataclass
class EvidenceSettings:
    seeds: tuple[int, ...] = EVIDENCE_SEEDS
    n_images: int = PHANTOM["n_images"]
    rows: tuple[str, ...] = tuple(r.name for r in ROWS)
    allow_tuning_seeds: bool = False
    epochs: int = 6  # every row's schedule on phantoms: the tiny recipe's shape at the demo's length
    lr_step: int = 4
    # the trunks' width, warm-up and schedule the design was registered with (the standard ResNet-18, no warm-up,
    # the step schedule, a standard-width alignment regressor; the tiny recipe later changed all four for the
    # demo, issue 22), so the command keeps reproducing the registered runs
    width: int = 64
    warmup: float = 0.0
    lr_schedule: str = "step"
    align_width: int = 64
    align_epochs: int = 5
    align_images: int = 800
    canonical_n: int = 200
    extra: dict[str, Any] = field(default_factory=dict)  # further generate_dataset arguments (tests)


def check_settings(s: EvidenceSettings) -> None:
    known = {r.name for r in ROWS}
    unknown = [r for r in s.rows if r not in known]
    if unknown:
        raise UsageError(f"unknown evidence row {unknown[0]!r}; rows: {', '.join(known)}")
    if not s.seeds:
        raise UsageError("--seeds: give at least one seed")
    tuned = sorted(set(s.seeds) & set(TUNING_SEEDS))
    if tuned and not s.allow_tuning_seeds:
        raise UsageError(
            f"--seeds {','.join(map(str, tuned))}: seeds 0-9 are the ones the recipe was tuned on; the "
            f"evidence uses other seeds (default {','.join(map(str, EVIDENCE_SEEDS))})"
        )
    if s.n_images < 100:
        raise UsageError(f"--n-images must be >= 100 for the evidence (5-fold protocol, test boxes), got {s.n_images}")


def estimate_seconds(
    s: EvidenceSettings, machine_gflops: float | None = None, finished: frozenset[tuple[int, str]] = frozenset()
) -> float:
    """Wall time of the whole experiment on this machine (float32, CPU), from :data:`REFERENCE_SECONDS`.

    ``finished``: ``(seed, row name)`` pairs whose runs are done and ``(seed, "data")`` for seeds whose data and
    alignment exist; a resumed experiment counts only what is left."""
    scale = s.n_images / PHANTOM["n_images"]
    total = 0.0
    for seed in s.seeds:
        if (seed, "data") not in finished:
            total += REFERENCE_SECONDS["data"] * scale + REFERENCE_SECONDS["align"]
        for row in ROWS:
            if row.name in s.rows and (seed, row.name) not in finished:
                kind = row.settings["model"]["kind"]
                total += REFERENCE_SECONDS["baseline" if kind == "baseline" else "cianet"] * scale
    speed = (machine_gflops / REFERENCE_MATMUL_GFLOPS) if machine_gflops else 1.0
    return total / max(speed, 1e-3)


def base_config(cfg: Config | None, phantom: bool, s: EvidenceSettings) -> Config:
    """The recipe every row trains with: the given config (default: the tiny CPU recipe); on phantoms with the
    pre-registered protocol (:data:`PROTOCOL`), schedule (``s.epochs``, ``s.lr_step``, ``s.lr_schedule``,
    ``s.warmup``) and trunk widths (``s.width``, ``s.align_width``)."""
    if cfg is None and not phantom:
        raise UsageError("experiment evidence on real data needs a config (--config paper or a YAML file)")
    base = copy.deepcopy(cfg) if cfg is not None else load_config("tiny")
    if phantom:
        for key, value in PROTOCOL.items():
            setattr(base.protocol, key, value)
        base.optim.epochs, base.optim.lr_step, base.optim.lr_schedule = s.epochs, s.lr_step, s.lr_schedule
        base.model.width, base.optim.warmup, base.align.width = s.width, s.warmup, s.align_width
    return base


def row_config(base: Config, row: Row, run_dir: Path, seed: int, seed_files: dict[str, Any]) -> Config:
    """The config of one row's run: the base recipe, the row's settings, the seed's data and negatives."""
    cfg = copy.deepcopy(base)
    for section, values in row.settings.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    cfg.run.seed, cfg.run.out = int(seed), str(run_dir)
    if seed_files.get("data"):
        cfg.data.data_root = str(seed_files["data"])
        cfg.data.cache = str(seed_files["cache"])
        cfg.align.canonical = str(seed_files[CANONICAL_CHEST])
        cfg.align.checkpoint = str(seed_files["align"])
    if not row.align:
        cfg.align.checkpoint = None
    index = seed_files.get(f"hash_{row.hash}") if row.hash and row.settings["model"]["kind"] == "cianet" else None
    cfg.negatives.hash_index = str(index) if index else None
    return cfg


def run_slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower().replace("__", "_")


def seed_paths(out: Path, seed: int) -> dict[str, Path]:
    """Where one phantom seed's data, cache, canonical chest, alignment network and hash indexes live."""
    root = out / f"seed{seed}"
    return {
        "data": root / "data",
        "cache": root / "cache",
        CANONICAL_CHEST: root / "canonical.png",
        "align": root / "align" / "align.pt",
        "hash_aligned": root / "hash_aligned.npz",
        "hash_plain": root / "hash_plain.npz",
    }


def row_dir(out: Path, seed: int, row: Row) -> Path:
    """The run folder of ``row`` on ``seed``."""
    return out / f"seed{seed}" / "runs" / run_slug(row.name)


def prepare_phantom_seed(
    out: Path, seed: int, s: EvidenceSettings, base: Config, say: Callable[[str], None]
) -> dict[str, Path]:
    """Phantom, cache, canonical chest, alignment network and hash indexes of one seed (each step skipped
    when its output exists, so a killed experiment resumes)."""
    files = seed_paths(out, seed)
    size = base.data.image_size
    if not (files["data"] / "synth_truth.csv").exists():
        say(f"seed {seed}: phantom of {s.n_images} images")
        generate_dataset(
            files["data"],
            n_images=s.n_images,
            size=size,
            seed=seed,
            twins=True,
            annotated_share=PHANTOM["annotated_share"],
            progress=False,
            **s.extra,
        )
    if not (files["cache"] / "index.json").exists():
        prepare_cache(files["data"], size, files["cache"], progress=False)
    if not files[CANONICAL_CHEST].exists():
        make_canonical(
            files["data"],
            files[CANONICAL_CHEST],
            n=s.canonical_n,
            size=size,
            seed=seed,
            cache=files["cache"],
            progress=False,
        )
    if not alignment_trained(files["align"], s.align_epochs):
        say(f"seed {seed}: alignment network")
        acfg = copy.deepcopy(base)
        acfg.data.data_root, acfg.data.cache = str(files["data"]), str(files["cache"])
        acfg.align.canonical, acfg.run.out, acfg.run.seed = (
            str(files[CANONICAL_CHEST]),
            str(files["align"].parent),
            seed,
        )
        acfg.align.epochs, acfg.align.max_images, acfg.run.progress = s.align_epochs, s.align_images, False
        train_alignment(acfg, resume=True)
    for key, align in (("hash_aligned", files["align"]), ("hash_plain", None)):
        if not files[key].exists():
            hash_data_root(
                files["data"], files[key], cache=files["cache"], progress=False, align=align, image_size=size
            )
    return files


def untrained_attention(run_dir: Path, seed: int) -> dict[str, Any] | None:
    """The attention metric of an untrained CIA-Net (the run's architecture, fresh weights seeded by ``seed``)
    on the run's own test images and negatives: the level the trained attention must beat."""
    run = load_run(run_dir, device="cpu")
    torch.manual_seed(seed)
    fresh = build_network(run.cfg).to(run.device)
    metrics = evaluate(
        fresh,
        run.test_loader,
        run.device,
        align_net=run.align_net,
        progress=False,
        rescale=run.cfg.loss.mil_rescale,
        precision="fp32",
    )
    return metrics.get("attention")


def run_evidence(
    cfg: Config | None,
    out_dir: str | Path,
    settings: EvidenceSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run (or resume) every row x seed, then write ``evidence.json``, ``evidence.md`` and the plot into
    ``out_dir``; returns the path of ``evidence.md``. ``cfg``: the recipe (default: tiny, on phantoms);
    a ``cfg.data.data_root`` switches to real data (one data set, the seeds vary splits and training)."""
    # lazy: tests replace cianet.training.loop.fit
    from cianet.training.loop import fit

    s = settings or EvidenceSettings()
    check_settings(s)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    phantom = not (cfg is not None and cfg.data.data_root)
    base = base_config(cfg, phantom, s)
    out = Path(out_dir)
    rows = [r for r in ROWS if r.name in s.rows]
    if not phantom:  # the upper bound needs the phantom's twins, which no real data set has
        bound = [r.name for r in rows if r.upper_bound]
        if bound and tuple(s.rows) != tuple(r.name for r in ROWS):
            raise UsageError(f"row {bound[0]!r} needs the phantom's twins; real data has none: leave it out of --rows")
        rows = [r for r in rows if not r.upper_bound]
    claim_output(out, "experiment-evidence", adopt=())
    with output_lock(out, "cianet experiment evidence"):
        gflops = _machine_gflops()
        done = frozenset(
            [(seed, r.name) for seed in s.seeds for r in rows if (row_dir(out, seed, r) / "metrics.json").exists()]
            + [(seed, "data") for seed in s.seeds if not phantom or seed_paths(out, seed)["align"].exists()]
        )
        left = estimate_seconds(s, gflops, done)
        say(
            f"[evidence] {len(rows)} rows x {len(s.seeds)} seeds, {len([d for d in done if d[1] != 'data'])} runs "
            f"done; estimated {left / 3600:.1f} h left on this machine (float32 matmul {gflops:.0f} GFLOP/s; "
            f"the reference 2-core Xeon: {estimate_seconds(s, None, done) / 3600:.1f} h)"
        )
        dirs: dict[str, list[Path]] = {r.name: [] for r in rows}
        t0 = time.time()
        for seed in s.seeds:
            files = (
                prepare_phantom_seed(out, seed, s, base, say)
                if phantom
                else {"hash_aligned": base.negatives.hash_index}
            )
            for row in rows:
                run_dir = row_dir(out, seed, row)
                run_cfg = row_config(base, row, run_dir, seed, files)
                check_reusable(run_dir, run_cfg, what=f"experiment evidence ({row.name}, seed {seed})")
                if not (run_dir / "metrics.json").exists():
                    say(f"[evidence] seed {seed}: {row.name} ({time.time() - t0:.0f} s so far)")
                    fit(run_cfg, resume=(run_dir / CHECKPOINT).exists())
                dirs[row.name].append(run_dir)
        return write_evidence(out, rows, dirs, s, phantom)


def _machine_gflops(n: int = 2048, repeats: int = 3) -> float:
    """This machine's float32 matmul rate (best of ``repeats``, 2048 x 2048 as the reference), to scale the
    reference time estimate."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def row_summary(run_dirs: list[Path]) -> dict[str, Any]:
    """Mean over seeds of a row's endpoints (from each run's metrics.json)."""
    per = [json.loads((d / "metrics.json").read_text()) for d in run_dirs]

    mean = _mean
    out: dict[str, Any] = {
        "seeds": len(per),
        "auc": mean([m["auc"].get("Mean") for m in per]),
        "localization": {t: mean([m["localization"][t].get("Mean") for m in per]) for t in per[0]["localization"]},
    }
    out["pointing_game"] = mean([(m.get("pointing_game") or {}).get("Mean") for m in per])
    att = [m.get("attention") for m in per if m.get("attention")]
    if att:
        out["attention"] = {k: mean([a.get(k) for a in att]) for k in ATTENTION_KEYS}
    return out


def write_evidence(out: Path, rows: list[Row], dirs: dict[str, list[Path]], s: EvidenceSettings, phantom: bool) -> Path:
    """Aggregate the runs into evidence.json / evidence.md / evidence.png (atomically)."""
    summaries = {r.name: row_summary(dirs[r.name]) for r in rows}
    for r in rows:  # how well the negatives match the test images outside the findings (aligned frame)
        if r.settings["model"]["kind"] == "cianet":
            matches = [negative_match(d) for d in dirs[r.name]]
            summaries[r.name]["match"] = {
                k: _mean([m[k]["mean"] for m in matches]) for k in ("no_finding", "with_finding")
            }
    comparisons = {
        f"{a} - {b}": compare_runs([[d] for d in dirs[a]], [[d] for d in dirs[b]], thresholds=(0.1, 0.3, 0.5, 0.7))
        for a, b in COMPARISONS
        if a in dirs and b in dirs
    }
    control = None
    if "CIA-Net sim" in dirs:  # the attention metric's chance level on the same images and pairs
        ctrl = [untrained_attention(d, seed) for d, seed in zip(dirs["CIA-Net sim"], s.seeds)]
        ctrl = [c for c in ctrl if c]
        if ctrl:
            control = {k: sum(c[k] for c in ctrl) / len(ctrl) for k in ATTENTION_KEYS}
    result = {
        "experiment": EXPERIMENT,
        "seeds": list(s.seeds),
        "data": "phantom" if phantom else "given data root",
        "n_images": s.n_images if phantom else None,
        "rows": summaries,
        "comparisons": comparisons,
        "untrained_attention": control,
        "runs": {name: [str(d.relative_to(out)) for d in ds] for name, ds in dirs.items()},
    }
    atomic_write_json(out / "evidence.json", json_safe(result))
    figure = plot_evidence(comparisons, out / "evidence.png")
    atomic_write_text(out / "evidence.md", evidence_markdown(result, rows, figure))
    return out / "evidence.md"


#: the endpoints of the comparison table, in the pre-registered order (compare_runs keys): the primary ones first
ENDPOINTS = (
    ("0.5", "loc. acc. T(IoU) 0.5"),
    ("pointing", "pointing game"),
    ("auc", "mean AUC"),
    ("0.1", "loc. acc. T(IoU) 0.1"),
    ("0.3", "loc. acc. T(IoU) 0.3"),
    ("0.7", "loc. acc. T(IoU) 0.7"),
)


def fmt(v: Any, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:+.3f}" if sign else f"{v:.3f}"


def rows_markdown(result: dict[str, Any], rows: list[Row]) -> list[str]:
    ts = ("0.1", "0.3", "0.5", "0.7")
    lines = [
        "| row | "
        + " | ".join(f"T(IoU) {t}" for t in ts)
        + " | pointing game | mean AUC | attention in finding | negative residual (No Finding / finding) |",
        "|---|" + "---|" * (len(ts) + 4),
    ]
    for r in rows:
        m = result["rows"][r.name]
        att = (m.get("attention") or {}).get("hit_rate")
        match = m.get("match") or {}
        residual = f"{fmt(match.get('no_finding'))} / {fmt(match.get('with_finding'))}" if match else "n/a"
        lines.append(
            f"| {r.name} | "
            + " | ".join(fmt(m["localization"].get(t)) for t in ts)
            + f" | {fmt(m.get('pointing_game'))} | {fmt(m.get('auc'))} | {fmt(att)} | {residual} |"
        )
    ctrl = result.get("untrained_attention")
    if ctrl:
        lines += [
            "",
            f"Untrained CIA-Net (fresh weights, same test images and negatives as CIA-Net sim): attention's "
            f"largest cell in a finding on {fmt(ctrl['hit_rate'])} of the images, mass in findings "
            f"{fmt(ctrl['mass_in_boxes'])} on {fmt(ctrl['area_share'])} of the grid: the metric's chance level.",
        ]
    return lines


def comparison_sentence(label: str, comp: dict[str, Any]) -> str:
    """What the primary endpoints' intervals say, in one sentence per comparison."""
    a, b = label.split(" - ")
    parts = []
    for key, what in (("0.5", "localization at T(IoU) 0.5"), ("pointing", "the pointing game"), ("auc", "mean AUC")):
        r = comp.get(key)
        if r is not None:
            parts.append(verdict(r, what=a, other=b, metric=what).rstrip("."))
    return "; ".join(parts) + "." if parts else f"{a} vs {b}: no endpoint could be compared."


def evidence_markdown(result: dict[str, Any], rows: list[Row], figure: Path | None) -> str:
    seeds = ", ".join(map(str, result["seeds"]))
    head = [
        "# Evidence: does a healthy image found without labels make the attention find lesions?",
        "",
        f"Seeds {seeds} (never the recipe's tuning seeds 0-9); data: {result['data']}"
        + (f", a phantom of {result['n_images']} images per seed" if result.get("n_images") else "")
        + ". Means over seeds; the oracle row is an upper bound (it sees a finding-free re-acquisition of "
        "the same patient), never evidence.",
        "",
        "## Rows",
        "",
    ]
    lines = head + rows_markdown(result, rows)
    lines += [
        "",
        "## Paired differences (95% bootstrap intervals over seeds and test boxes/images)",
        "",
        "| comparison | " + " | ".join(w for _, w in ENDPOINTS) + " |",
        "|---|" + "---|" * len(ENDPOINTS),
    ]
    for label, comp in result["comparisons"].items():
        cells = []
        for key, _ in ENDPOINTS:
            r = comp.get(key)
            cells.append(
                "n/a" if r is None else f"{fmt(r['diff'], True)} [{fmt(r['low'], True)}, {fmt(r['high'], True)}]"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## What the intervals say", ""]
    lines += [f"- {comparison_sentence(label, comp)}" for label, comp in result["comparisons"].items()]
    if figure is not None:
        lines += ["", f"![paired differences]({figure.name})"]
    return "\n".join(lines) + "\n"


def plot_evidence(comparisons: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Forest plot: each comparison's difference and 95% interval on the three primary endpoints."""
    if not comparisons:
        return None
    # lazy: matplotlib is needed for plots only
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("0.5", "T(IoU) 0.5"), ("pointing", "pointing game"), ("auc", "mean AUC")]
    labels = list(comparisons)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys) + 3, 0.45 * len(labels) + 1.5), sharey=True)
    for ax, (key, title) in zip(axes, keys):
        for y, label in enumerate(labels):
            r = comparisons[label].get(key)
            if r is None or r.get("low") is None:
                continue
            ax.plot([r["low"], r["high"]], [y, y], color="0.3")
            ax.plot([r["diff"]], [y], "o", color="C3" if r["low"] > 0 else "C0" if r["high"] < 0 else "0.3")
        ax.axvline(0, color="0.6", lw=0.8, ls="--")
        ax.set_title(title)
        ax.set_xlabel("difference (A - B)")
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].invert_yaxis()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path

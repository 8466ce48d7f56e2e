"""``cianet experiment pool``: does a larger negative pool give better-matched negatives, and does CIA-Net gain?

NIH offers about 60,000 No Finding images to pair with; a phantom of 800 images about 200. This study keeps a
seed's phantom fixed and grows only its pool with No Finding images of new patients that are never trained on
or tested (``cianet synth --extra-negatives``: the other images, the split and the test boxes stay the same),
then trains CIA-Net with the paper's hash-nearest negatives (``sim``, aligned codes) on each pool. Per pool it
reports the negatives' pixel residual outside the findings (:mod:`cianet.evaluation.negative_match`) and
CIA-Net minus Base with a paired bootstrap interval. Base never looks at a negative, so one Base run serves
every pool; the seed's alignment network and canonical chest are shared too (trained on the same images).

Its folder layout extends the evidence experiment's (``OUT/seed<s>/...``): run into the same ``--out`` and the
seed's phantom, alignment, Base and CIA-Net sim runs are reused (only when their configs match).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cianet.config import Config, load_config
from cianet.data.cache import ImageCache, prepare_cache
from cianet.errors import UsageError
from cianet.evaluation.comparisons import compare_runs
from cianet.evaluation.negative_match import negative_match
from cianet.experiments import evidence as ev
from cianet.experiments.plans import DEFAULT_EXTRAS, EVIDENCE_SEEDS, PHANTOM, ROWS
from cianet.phantom import generate_dataset
from cianet.run.checkpoints import CHECKPOINT
from cianet.run.pairing import hash_data_root, negative_pool
from cianet.run.protocol import build_run_data
from cianet.run.reuse import check_reusable
from cianet.run.scoring import json_safe
from cianet.training.loop import fit
from cianet.utils.atomic import atomic_write_json, atomic_write_text
from cianet.utils.output_folders import claim_output, output_lock


def pool_files(
    out: Path,
    seed: int,
    extra: int,
    s: ev.EvidenceSettings,
    base: Config,
    seed_files: dict[str, Path],
    say: Callable[[str], None],
) -> dict[str, Path]:
    """The seed's files with the data root, cache and aligned hash index of a pool grown by ``extra``."""
    if extra == 0:
        return seed_files
    root = out / f"seed{seed}" / f"pool_extra{extra}"
    files = dict(seed_files, data=root / "data", cache=root / "cache", hash_aligned=root / "hash_aligned.npz")
    size = base.data.image_size
    if not (files["data"] / "synth_truth.csv").exists():
        say(f"[pool] seed {seed}: phantom with {extra} extra pool-only No Finding images")
        generate_dataset(
            files["data"],
            n_images=s.n_images,
            size=size,
            seed=seed,
            extra_negatives=extra,
            annotated_share=PHANTOM["annotated_share"],
            progress=False,
            **s.extra,
        )
    if not (files["cache"] / "index.json").exists():
        prepare_cache(files["data"], size, files["cache"], progress=False)
    if not files["hash_aligned"].exists():
        hash_data_root(
            files["data"],
            files["hash_aligned"],
            cache=files["cache"],
            progress=False,
            align=seed_files["align"],
            image_size=size,
        )
    return files


def run_pool_study(
    cfg: Config | None,
    out_dir: str | Path,
    seed: int = EVIDENCE_SEEDS[0],
    extras: tuple[int, ...] = DEFAULT_EXTRAS,
    settings: ev.EvidenceSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run (or resume) Base and CIA-Net sim on each pool of one seed's phantom; writes ``pool.json`` and
    ``pool.md`` into ``out_dir`` and returns the path of ``pool.md``."""
    s = settings or ev.EvidenceSettings(seeds=(seed,))
    s.seeds = (seed,)
    ev.check_settings(s)
    if cfg is not None and cfg.data.data_root:
        raise UsageError("experiment pool runs on phantoms only (it grows a phantom's pool): leave --data-root out")
    if not extras or min(extras) < 0 or len(set(extras)) != len(extras):
        raise UsageError(f"pool extras must be distinct counts >= 0, got {extras}")
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    base = ev.base_config(cfg, True, s)
    out = Path(out_dir)
    rows = {r.name: r for r in ROWS}
    claim_output(out, "experiment-evidence", adopt=())
    with output_lock(out, "cianet experiment pool"):
        seed_files = ev.prepare_phantom_seed(out, seed, s, base, say)
        runs: dict[str, Path] = {}
        for extra in (None, *extras):  # None: Base, on the seed's own data
            row = rows["Base" if extra is None else "CIA-Net sim"]
            files = pool_files(out, seed, extra or 0, s, base, seed_files, say)
            name = ev.run_slug(row.name) if not extra else f"{ev.run_slug(row.name)}_pool_extra{extra}"
            run_dir = out / f"seed{seed}" / "runs" / name
            run_cfg = ev.row_config(base, row, run_dir, seed, files)
            check_reusable(run_dir, run_cfg, what=f"experiment pool ({row.name}, extra {extra or 0}, seed {seed})")
            if not (run_dir / "metrics.json").exists():
                say(f"[pool] seed {seed}: {row.name}" + (f", pool + {extra}" if extra is not None else ""))
                fit(run_cfg, resume=(run_dir / CHECKPOINT).exists())
            runs["base" if extra is None else str(extra)] = run_dir
        result = {"experiment": "pool", "seed": seed, "n_images": s.n_images, "pools": {}}
        for extra in extras:
            run_dir = runs[str(extra)]
            result["pools"][str(extra)] = {
                "pool_size": _pool_size(run_dir),
                "match": negative_match(run_dir),
                "cianet_minus_base": compare_runs([[run_dir]], [[runs["base"]]], thresholds=(0.1, 0.3, 0.5, 0.7)),
                "run": str(run_dir.relative_to(out)),
            }
        atomic_write_json(out / "pool.json", json_safe(result))
        atomic_write_text(out / "pool.md", pool_markdown(result))
        return out / "pool.md"


def _pool_size(run_dir: Path) -> int:
    """How many No Finding images the run paired from: its negative pool (run.pairing.negative_pool)."""
    cfg = load_config(run_dir / "config.yaml")
    data = build_run_data(cfg)
    available = set(ImageCache.open(cfg.data.cache).names) if cfg.data.cache else set()
    return len(negative_pool(data.index, exclude=set(data.held_out), available=available))


def _diff_cell(diffs: dict[str, Any], key: str) -> str:
    """The table cell of the CIA-Net - Base difference ``diffs[key]``: value [low, high], or n/a."""
    r = diffs.get(key)
    return "n/a" if r is None else f"{ev.fmt(r['diff'], True)} [{ev.fmt(r['low'], True)}, {ev.fmt(r['high'], True)}]"


def pool_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Negative pool size (seed {result['seed']}, phantom of {result['n_images']} images)",
        "",
        "| extra pool-only negatives | pool | residual, No Finding test images | residual, with a finding | "
        "CIA-Net sim - Base, T(IoU) 0.5 | pointing game | mean AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for extra, p in result["pools"].items():
        m, c = p["match"], p["cianet_minus_base"]
        lines.append(
            f"| {extra} | {p['pool_size'] if p['pool_size'] is not None else 'n/a'} | "
            f"{ev.fmt(m['no_finding']['mean'])} | {ev.fmt(m['with_finding']['mean'])} | {_diff_cell(c, '0.5')} | "
            f"{_diff_cell(c, 'pointing')} | {_diff_cell(c, 'auc')} |"
        )
    lines += [
        "",
        "Residual: mean |aligned image - aligned negative| (gray values in [0, 1]) outside the test image's "
        "boxes; lower is a better match. Intervals: 95% paired bootstrap over test boxes (AUC: images).",
    ]
    return "\n".join(lines) + "\n"

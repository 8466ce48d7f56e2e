"""``cianet experiment``: one of the paper's tables (table1 ... table6), the phantom's oracle checks, or the
pre-registered evidence experiment; every variant, fold and seed, resumable."""

from __future__ import annotations

import argparse
import json

from cianet.commands.common import add_config_args, add_json_arg, add_precision_arg, config_from_args, print_json
from cianet.errors import UsageError
from cianet.experiments.plans import DEFAULT_EXTRAS, EVIDENCE_SEEDS, EXPERIMENTS, PHANTOM, ROWS


def register(sub) -> None:
    seeds = ",".join(map(str, EVIDENCE_SEEDS))
    p = sub.add_parser(
        "experiment",
        help="one of the paper's tables (table1 ... table6), an oracle check, the evidence experiment or the "
        "negative-pool study",
        description="Run (or resume) every variant, fold and seed of an experiment and write its table with paired "
        "bootstrap intervals. `evidence` compares Base with CIA-Net under every negative strategy "
        "(docs/method.md, 'Evidence'): on phantoms it generates one per seed. `pool` grows one seed's "
        "negative pool (about 200, 2,900, 30,000 images) and measures the negatives' match and CIA-Net "
        "minus Base.",
        epilog=f"examples:\n  cianet experiment evidence --out ev            # phantoms, seeds {seeds}, "
        "tiny recipe (hours on a 2-core CPU)\n"
        "  cianet experiment table1 --config tiny --data-root ph --cache ph-cache --folds 0 --out t1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=[*EXPERIMENTS, "evidence", "pool"])
    add_config_args(p, default_config=None)
    add_precision_arg(p)
    p.add_argument("--folds", help="comma-separated folds to run (default: all 5; table4 has none; evidence: fold 0)")
    p.add_argument(
        "--seeds",
        help="comma-separated seeds: every run once per seed, differences with a bootstrap "
        f"over seeds too (default: --seed alone; evidence: {seeds})",
    )
    p.add_argument("--align", help="alignment checkpoint used by the variants that align (table6: required)")
    p.add_argument(
        "--n-images",
        type=int,
        default=None,
        help=f"evidence on phantoms: images per seed's phantom (default {PHANTOM['n_images']})",
    )
    p.add_argument(
        "--rows",
        help="evidence: comma-separated rows to run (default: all; on real data all but the "
        f"upper bound): {'; '.join(r.name for r in ROWS)}",
    )
    p.add_argument(
        "--extras",
        help="pool: comma-separated counts of extra pool-only negatives (default "
        f"{','.join(map(str, DEFAULT_EXTRAS))}: pools of about 200, 2,900 and 30,000)",
    )
    add_json_arg(p, "the table's files and its results (NAME.json)")
    p.set_defaults(func=cmd_experiment, model=None, negatives=None)


def int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise UsageError(f"{flag} takes distinct non-negative integers, got {text!r}")
    return values


def cmd_experiment(args: argparse.Namespace) -> int:
    if args.name in ("evidence", "pool"):
        out = _evidence(args)
    else:
        # lazy: the library loads when the command runs, not when cianet builds its parser
        from cianet.experiments.tables import run_experiment

        args.config = args.config or "paper"
        cfg = config_from_args(args)
        folds = int_list(args.folds, "--folds") if args.folds else None
        seeds = int_list(args.seeds, "--seeds") if args.seeds else None
        out = run_experiment(args.name, cfg, out_dir=args.out or f"runs/{args.name}", folds=folds, seeds=seeds)
    if args.json:
        table = out.with_suffix(".json")
        print_json(args, {"table_md": out, "table_json": table, **json.loads(table.read_text())})
        return 0
    print(out.read_text())
    return 0


def _evidence(args: argparse.Namespace):
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.experiments.evidence import EvidenceSettings, run_evidence

    if args.folds:
        raise UsageError(
            "--folds: the evidence experiment tests on fold 0 of every seed (set protocol.fold with --set to change it)"
        )
    args.config = args.config or ("paper" if args.data_root else "tiny")
    cfg = config_from_args(args)
    settings = EvidenceSettings()
    if args.seeds:
        settings.seeds = tuple(int_list(args.seeds, "--seeds"))
    if args.n_images is not None:
        settings.n_images = args.n_images
    if args.rows:
        settings.rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())
    if args.name == "pool":
        from cianet.experiments.pool_study import run_pool_study

        if len(settings.seeds) != 1 and args.seeds:
            raise UsageError("experiment pool takes one seed (--seeds 10)")
        extras = tuple(int_list(args.extras, "--extras")) if args.extras else DEFAULT_EXTRAS
        return run_pool_study(
            cfg, args.out or "runs/evidence", seed=settings.seeds[0], extras=extras, settings=settings
        )
    return run_evidence(cfg, args.out or "runs/evidence", settings)

"""``cianet experiment``: one of the paper's tables (table1 ... table6) or the phantom's oracle check, every
variant, fold and seed, resumable."""

from __future__ import annotations

import argparse

from cianet.commands.common import add_config_args, add_json_arg, add_precision_arg, config_from_args, print_json


def register(sub) -> None:
    from cianet.evaluation.experiments import EXPERIMENTS

    p = sub.add_parser("experiment",
                       help="one of the paper's tables (table1 ... table6) or an oracle check (oracle, oracle-table2)")
    p.add_argument("name", choices=list(EXPERIMENTS))
    add_config_args(p)
    add_precision_arg(p)
    p.add_argument("--folds", help="comma-separated folds to run (default: all 5; table4 has none)")
    p.add_argument("--seeds", help="comma-separated seeds: every run once per seed, differences with a bootstrap "
                                   "over seeds too (default: --seed alone)")
    p.add_argument("--align", help="alignment checkpoint used by the variants that align (table6: required)")
    add_json_arg(p, "the table's files and its results (tableN.json)")
    p.set_defaults(func=cmd_experiment, model=None, negatives=None)


def int_list(text: str, flag: str) -> list[int]:
    from cianet.errors import UsageError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise UsageError(f"{flag} takes distinct non-negative integers, got {text!r}")
    return values


def cmd_experiment(args: argparse.Namespace) -> int:
    from cianet.evaluation.experiments import run_experiment

    cfg = config_from_args(args)
    folds = int_list(args.folds, "--folds") if args.folds else None
    seeds = int_list(args.seeds, "--seeds") if args.seeds else None
    out = run_experiment(args.name, cfg, out_dir=args.out or f"runs/{args.name}", folds=folds, seeds=seeds)
    if args.json:
        import json

        table = out.with_suffix(".json")
        print_json(args, {"table_md": out, "table_json": table, **json.loads(table.read_text())})
        return 0
    print(out.read_text())
    return 0

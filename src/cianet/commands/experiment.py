"""``cianet experiment``: one of the paper's tables (table1 ... table6), every variant and fold, resumable."""

from __future__ import annotations

import argparse

from cianet.commands.common import add_config_args, config_from_args


def register(sub) -> None:
    p = sub.add_parser("experiment", help="one of the paper's tables: table1 ... table6")
    p.add_argument("name", choices=["table1", "table2", "table3", "table4", "table5", "table6"])
    add_config_args(p)
    p.add_argument("--folds", help="comma-separated folds to run (default: all 5; table4 has none)")
    p.add_argument("--align", help="alignment checkpoint used by the variants that align (table6: required)")
    p.set_defaults(func=cmd_experiment, model=None, negatives=None)


def cmd_experiment(args: argparse.Namespace) -> int:
    from cianet.evaluation.experiments import run_experiment

    cfg = config_from_args(args)
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    out = run_experiment(args.name, cfg, out_dir=args.out or f"runs/{args.name}", folds=folds)
    print(out.read_text())
    return 0

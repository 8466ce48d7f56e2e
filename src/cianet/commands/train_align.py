"""``cianet train-align``: train the alignment network against the canonical chest (paper 3.1)."""

from __future__ import annotations

import argparse

from cianet.commands.common import add_config_args, config_from_args


def register(sub) -> None:
    p = sub.add_parser("train-align", help="train the alignment network against the canonical chest (paper 3.1)")
    add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=cmd_train_align)


def cmd_train_align(args: argparse.Namespace) -> int:
    from cianet.training.alignment import train_alignment

    cfg = config_from_args(args)
    if args.out is None:
        cfg.run.out = "runs/align"
    out = train_alignment(cfg, resume=args.resume)
    print(f"alignment network: {out / 'align.pt'}")
    return 0

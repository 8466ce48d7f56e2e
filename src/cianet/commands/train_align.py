"""``cianet train-align``: train the alignment network against the canonical chest (paper 3.1)."""

from __future__ import annotations

import argparse

from cianet.commands.common import PRETRAINED_HELP, add_config_args, add_json_arg, config_from_args, print_json
from cianet.config import check_value
from cianet.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser(
        "train-align",
        help="train the alignment network against the canonical chest (paper 3.1)",
        description="Train the alignment network into --out (default runs/align). Here --epochs, "
        "--batch-size, --lr and --backbone set the alignment's align.epochs, "
        "align.batch_size, align.lr and align.backbone.",
    )
    add_config_args(p)
    p.add_argument(
        "--pretrained",
        dest="align_pretrained",
        metavar="imagenet|none|PATH",
        help=f"align.pretrained (the alignment trunk; none also leaves the structure loss's feature net "
        f"random): {PRETRAINED_HELP}",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_json_arg(p, "the checkpoint written and the last epoch's losses")
    p.set_defaults(func=cmd_train_align)


def cmd_train_align(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.run.checkpoints import check_resume_flags
    from cianet.training.alignment import train_alignment

    cfg = config_from_args(args)
    set_alignment_schedule(cfg, args)
    if args.out is None:
        cfg.run.out = "runs/align"
    if args.resume:
        check_resume_flags(cfg.run.out, cfg, args.given)
    else:
        from cianet.run.networks import check_pretrained

        check_pretrained(  # before any image is read
            cfg.align.pretrained, cfg.align.backbone, cfg.align.width, key="align.width"
        )
    out = train_alignment(cfg, resume=args.resume)
    if args.json:
        from cianet.evaluation.plots import read_log

        epochs = [r for r in read_log(out / "log.jsonl") if r.get("event") == "epoch"]
        print_json(
            args,
            {
                "run": out,
                "checkpoint": out / "align.pt",
                "epochs": cfg.align.epochs,
                "last_epoch": epochs[-1] if epochs else None,
            },
        )
        return 0
    print(f"alignment network: {out / 'align.pt'}")
    return 0


def set_alignment_schedule(cfg, args: argparse.Namespace) -> None:
    """--epochs, --batch-size, --lr and --backbone of train-align are the alignment network's (align.*), not the
    classifier's."""
    for attr in ("epochs", "batch_size", "lr", "backbone"):
        value = getattr(args, attr, None)
        if value is not None:
            try:
                setattr(cfg.align, attr, check_value("align", attr, value))
            except ValueError as exc:
                raise UsageError(f"--{attr.replace('_', '-')} {value}: {exc}") from None

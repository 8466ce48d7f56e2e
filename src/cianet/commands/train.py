"""``cianet train``: train CIA-Net or the baseline on a protocol (paper 3.2-3.3)."""

from __future__ import annotations

import argparse
import json

from cianet.commands.common import (PRETRAINED_HELP, add_config_args, add_json_arg, add_precision_arg,
                                    config_from_args, print_json, run_result)


def register(sub) -> None:
    p = sub.add_parser("train", help="train CIA-Net or the baseline on a protocol (paper 3.2-3.3)")
    add_config_args(p)
    add_precision_arg(p)
    g = p.add_argument_group("model and protocol")
    g.add_argument("--model", choices=["cianet", "baseline"], help="model.kind (both recipes: cianet)")
    g.add_argument("--pretrained", metavar="imagenet|none|PATH", help=f"model.pretrained: {PRETRAINED_HELP}")
    g.add_argument("--align", help="alignment checkpoint (align.pt or its run folder), or 'none'")
    g.add_argument("--negatives", choices=["sim", "random", "canonical", "oracle"],
                   help="negative sampling (paper Table 5); oracle: the phantom's twins (`cianet synth --twins`)")
    g.add_argument("--hash-index", help="hash index from `cianet hash` (default: built for the run)")
    g.add_argument("--splits", help="splits JSON from `cianet splits` (default: made from --seed)")
    g.add_argument("--fold", type=int, help="localization fold 0-4")
    g.add_argument("--annotated-ratio", type=float, help="share of annotated images with boxes: 0, 0.4, 0.8")
    g.add_argument("--unannotated-ratio", type=float, help="share of unannotated images: 0.5 or 1.0")
    g.add_argument("--unannotated-only", action="store_true", help="paper Table 2: no boxes; test on all annotated")
    g.add_argument("--classification", action="store_true", help="the 70/10/20 classification split (Table 4)")
    g.add_argument("--official", action="store_true", help="with --classification: NIH's official lists")
    g.add_argument("--allow-patient-overlap", action="store_true", help="reproduce the naive, leaky split")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    add_json_arg(p, "the run folder, its files and its test metrics (AUC, localization accuracy)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from cianet.run.checkpoints import check_resume_flags
    from cianet.run.device import is_main_process
    from cianet.training.loop import fit

    from cianet.run.networks import check_pretrained

    cfg = config_from_args(args)
    if args.resume:
        check_resume_flags(cfg.run.out, cfg, args.given)  # --resume --epochs 2: refused, not ignored
    else:
        check_pretrained(cfg.model.pretrained, cfg.model.backbone)  # before hours of data preparation
    out = fit(cfg, resume=args.resume)
    if not is_main_process():  # under torchrun only rank 0 reports
        return 0
    if args.json:
        print_json(args, run_result(out))
        return 0
    metrics = json.loads((out / "metrics.json").read_text())
    loc = metrics["localization"]
    print(f"run: {out}")
    print(f"mean AUC {metrics['auc']['Mean']}; mean localization accuracy "
          + ", ".join(f"T={t}: {v['Mean']}" for t, v in loc.items() if t in ("0.1", "0.3", "0.5", "0.7")))
    return 0

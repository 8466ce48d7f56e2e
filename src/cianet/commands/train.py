"""``cianet train``: train CIA-Net or the baseline on a protocol (paper 3.2-3.3)."""

from __future__ import annotations

import argparse
import json

from cianet.commands.common import (
    PRETRAINED_HELP,
    add_config_args,
    add_json_arg,
    add_precision_arg,
    config_from_args,
    print_json,
    recipe_default,
    run_result,
)
from cianet.config import BASE_STRATEGIES, NEGATIVE_STRATEGIES


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train CIA-Net or the baseline on a protocol (paper 3.2-3.3)",
        description="Train CIA-Net (or the baseline of Li et al.) on a protocol of the paper: the recipe "
        "(--config paper or tiny, or a YAML file), then the flags, then every --set. Writes the run "
        "folder (config.yaml, split.json, checkpoint.pt, log.jsonl) and scores the last epoch on the "
        "test split (metrics.json); `cianet evaluate --run OUT` adds curves and intervals. Flags left "
        "out take the recipe's value.",
    )
    add_config_args(p)
    add_precision_arg(p)
    g = p.add_argument_group("model and protocol")
    g.add_argument("--model", choices=["cianet", "baseline"], help="model.kind (default: cianet in both recipes)")
    g.add_argument("--pretrained", metavar="imagenet|none|PATH", help=f"model.pretrained: {PRETRAINED_HELP}")
    g.add_argument("--align", help="alignment checkpoint (align.pt or its run folder), or 'none'")
    g.add_argument(
        "--negatives",
        choices=list(NEGATIVE_STRATEGIES),
        help="negatives.strategy, what each image is contrasted with (docs/method.md, Negative "
        "sampling): "
        + "; ".join(f"{k}: {v.description}" for k, v in NEGATIVE_STRATEGIES.items())
        + f" (default: {recipe_default('negatives', 'strategy')})",
    )
    g.add_argument(
        "--prior-fallback",
        choices=list(BASE_STRATEGIES),
        help="negatives.prior_fallback: how prior/prior_any pair images without such a study (default sim)",
    )
    g.add_argument("--hash-index", help="hash index from `cianet hash` (default: built for the run)")
    g.add_argument("--splits", help="splits JSON from `cianet splits` (default: made from --seed)")
    g.add_argument("--fold", type=int, help=f"localization fold 0-4 (default: {recipe_default('protocol', 'fold')})")
    g.add_argument(
        "--annotated-ratio",
        type=float,
        help="share of annotated images with boxes: 0, 0.4, 0.8 "
        f"(default: {recipe_default('protocol', 'annotated_ratio')})",
    )
    g.add_argument(
        "--unannotated-ratio",
        type=float,
        help=f"share of unannotated images: 0.5 or 1.0 (default: {recipe_default('protocol', 'unannotated_ratio')})",
    )
    g.add_argument("--unannotated-only", action="store_true", help="paper Table 2: no boxes; test on all annotated")
    g.add_argument("--classification", action="store_true", help="the 70/10/20 classification split (Table 4)")
    g.add_argument("--official", action="store_true", help="with --classification: NIH's official lists")
    g.add_argument("--allow-patient-overlap", action="store_true", help="reproduce the naive, leaky split")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    add_json_arg(p, "the run folder, its files and its test metrics (AUC, localization accuracy)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.run.checkpoints import check_resume_flags
    from cianet.run.device import is_main_process
    from cianet.run.networks import check_pretrained
    from cianet.training.loop import fit

    cfg = config_from_args(args)
    if args.resume:
        check_resume_flags(cfg.run.out, cfg, args.given)  # --resume --epochs 2: refused, not ignored
    else:
        check_pretrained(cfg.model.pretrained, cfg.model.backbone, cfg.model.width)  # before hours of data preparation
    out = fit(cfg, resume=args.resume)
    if not is_main_process():  # under torchrun only rank 0 reports
        return 0
    from cianet.run.pairing import NEGATIVES_JSON, counts_line

    negatives = json.loads((out / NEGATIVES_JSON).read_text()) if (out / NEGATIVES_JSON).is_file() else None
    if args.json:
        print_json(args, {**run_result(out), "negatives": negatives})
        return 0
    metrics = json.loads((out / "metrics.json").read_text())
    loc = metrics["localization"]
    print(f"run: {out}")
    if negatives is not None:
        print(f"{counts_line(negatives)} (per image: {out / 'negatives.csv'})")
    print(
        f"mean AUC {metrics['auc']['Mean']}; mean localization accuracy "
        + ", ".join(f"T={t}: {v['Mean']}" for t, v in loc.items() if t in ("0.1", "0.3", "0.5", "0.7"))
    )
    return 0

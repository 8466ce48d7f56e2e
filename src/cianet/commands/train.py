"""Commands: train-align, train, evaluate, experiment, demo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser, default_config: str = "paper") -> None:
    g = p.add_argument_group("configuration (flags override the config file; --set overrides anything)")
    g.add_argument("--config", default=default_config, help=f"recipe name (paper, tiny) or YAML file (default {default_config})")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config value, e.g. --set optim.lr=0.01 (repeatable)")
    g.add_argument("--data-root", help="NIH-layout data folder")
    g.add_argument("--entry-csv", help="Data_Entry csv (default: found at the data root)")
    g.add_argument("--bbox-csv", help="BBox_List csv (default: found at the data root)")
    g.add_argument("--cache", help="image cache folder from `cianet prepare` (same --image-size)")
    g.add_argument("--out", help="run folder")
    g.add_argument("--image-size", type=int, help="network input size (multiple of 32)")
    g.add_argument("--backbone", help="resnet18 | resnet34 | resnet50 | resnet101")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--workers", type=int, help="DataLoader worker processes")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--seed", type=int)
    g.add_argument("--max-images", type=int, help="cap the image lists (reduced runs)")
    g.add_argument("--canonical", help="canonical chest PNG (`cianet canonical`)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace):
    from cianet.config import apply_overrides, load_config

    cfg = load_config(args.config)
    pairs = {
        ("data", "data_root"): "data_root", ("data", "entry_csv"): "entry_csv", ("data", "bbox_csv"): "bbox_csv",
        ("data", "cache"): "cache", ("run", "out"): "out", ("data", "image_size"): "image_size",
        ("model", "backbone"): "backbone", ("optim", "epochs"): "epochs", ("optim", "batch_size"): "batch_size",
        ("optim", "lr"): "lr", ("data", "workers"): "workers", ("run", "device"): "device", ("run", "seed"): "seed",
        ("data", "max_images"): "max_images", ("align", "canonical"): "canonical",
        ("model", "kind"): "model", ("negatives", "strategy"): "negatives", ("negatives", "hash_index"): "hash_index",
        ("protocol", "fold"): "fold", ("protocol", "annotated_ratio"): "annotated_ratio",
        ("protocol", "unannotated_ratio"): "unannotated_ratio", ("protocol", "splits"): "splits",
    }
    for (section, key), attr in pairs.items():
        value = getattr(args, attr, None)
        if value is not None:
            setattr(getattr(cfg, section), key, value)
    if getattr(args, "align", None) is not None:
        cfg.align.checkpoint = None if args.align.lower() == "none" else args.align
    for flag, (section, key) in {"unannotated_only": ("protocol", "unannotated_only"),
                                 "allow_patient_overlap": ("protocol", "allow_patient_overlap"),
                                 "official": ("protocol", "official")}.items():
        if getattr(args, flag, False):
            setattr(getattr(cfg, section), key, True)
    if getattr(args, "classification", False):
        cfg.protocol.kind = "classification"
    if args.no_progress:
        cfg.run.progress = False
    apply_overrides(cfg, args.overrides)
    if cfg.data.image_size % 32:
        raise ValueError(f"image size {cfg.data.image_size} is not a multiple of 32")
    return cfg


def cmd_train_align(args: argparse.Namespace) -> int:
    from cianet.engine.align import train_alignment

    cfg = config_from_args(args)
    if args.out is None:
        cfg.run.out = "runs/align"
    out = train_alignment(cfg, resume=args.resume)
    print(f"alignment network: {out / 'align.pt'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cianet.engine.train import distributed_info, fit

    cfg = config_from_args(args)
    out = fit(cfg, resume=args.resume)
    if distributed_info()[0] != 0:  # under torchrun only rank 0 reports
        return 0
    metrics = json.loads((out / "metrics.json").read_text())
    loc = metrics["localization"]
    print(f"run: {out}")
    print(f"mean AUC {metrics['auc']['Mean']}; mean localization accuracy "
          + ", ".join(f"T={t}: {v['Mean']}" for t, v in loc.items() if t in ("0.1", "0.3", "0.5", "0.7")))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cianet.engine.evaluate import evaluate_run

    metrics = evaluate_run(args.run, device=args.device, progress=not args.no_progress, data_root=args.data_root)
    if args.json:
        from cianet.engine.evaluate import _clean

        print(json.dumps(_clean({k: metrics[k] for k in ("localization", "auc", "n_images", "n_boxes")})))
    else:
        print((Path(args.run) / "metrics.md").read_text())
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from cianet.engine.experiments import run_experiment

    cfg = config_from_args(args)
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    out = run_experiment(args.name, cfg, out_dir=args.out or f"runs/{args.name}", folds=folds)
    print(out.read_text())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cianet.engine.demo import run_demo

    report = run_demo(args.out, fast=args.fast, seed=args.seed, n_images=args.n_images, resume=not args.fresh,
                      progress=not args.no_progress)
    print(f"report: {report}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("train-align", help="train the alignment network against the canonical chest (paper 3.1)")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=cmd_train_align)

    p = sub.add_parser("train", help="train CIA-Net or the baseline on a protocol (paper 3.2-3.3)")
    _add_config_args(p)
    g = p.add_argument_group("model and protocol")
    g.add_argument("--model", choices=["cianet", "baseline"])
    g.add_argument("--align", help="alignment checkpoint (align.pt or its run folder), or 'none'")
    g.add_argument("--negatives", choices=["sim", "random", "canonical"], help="negative sampling (paper Table 5)")
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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run as the paper does (localization accuracy, AUC)")
    p.add_argument("--run", required=True, help="run folder of `cianet train`")
    p.add_argument("--data-root", help="override the data root saved in the run")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print metrics as one JSON object")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("experiment", help="one of the paper's tables: table1 ... table6")
    p.add_argument("name", choices=["table1", "table2", "table3", "table4", "table5", "table6"])
    _add_config_args(p)
    p.add_argument("--folds", help="comma-separated folds to run (default: all 5; table4 has none)")
    p.add_argument("--align", help="alignment checkpoint used by the variants that align (table6: required)")
    p.set_defaults(func=cmd_experiment, model=None, negatives=None)

    p = sub.add_parser("demo", help="the whole pipeline on the synthetic phantom, on a CPU, with a report")
    p.add_argument("--out", default="cianet-demo", help="output folder (default cianet-demo)")
    p.add_argument("--fast", action="store_true", help="a smoke run in under 2 minutes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-images", type=int, help="phantom size (default: 1000, --fast: 240)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming what exists in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

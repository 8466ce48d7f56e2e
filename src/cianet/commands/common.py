"""Flags shared by several commands (each command module imports only this and the library)."""

from __future__ import annotations

import argparse


def add_root_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", required=True, help="folder holding Data_Entry_2017*.csv[.gz] and the images")
    p.add_argument("--entry-csv", default=None, help="entry CSV to use instead of Data_Entry_2017[_v2020].csv "
                   "(relative to the data root or absolute)")
    p.add_argument("--bbox-csv", default=None, help="box CSV to use instead of BBox_List_2017.csv")
    p.add_argument("--strict", action="store_true",
                   help="fail if any image file is missing or a box names an image not in the entry CSV")


def add_config_args(p: argparse.ArgumentParser, default_config: str = "paper") -> None:
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
    """The run config: the recipe of ``--config``, then the flags given, then every ``--set``."""
    from cianet.config import apply_overrides, load_config
    from cianet.errors import UsageError

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
        raise UsageError(f"image size {cfg.data.image_size} is not a multiple of 32")
    return cfg

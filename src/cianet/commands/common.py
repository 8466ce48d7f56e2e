"""Flags shared by several commands (each command module imports only this and the library), and the one way
a command prints its result as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cianet.config import apply_overrides, check_paths_exist, choices, load_config, validate_config


def add_json_arg(p, what: str = "what was written") -> None:
    """``--json``: the command's result as one JSON object on stdout (see :func:`print_json`)."""
    p.add_argument(
        "--json",
        action="store_true",
        help=f"print {what} as one JSON object on stdout (progress and messages go to stderr)",
    )


def print_json(args: argparse.Namespace, obj: Any) -> None:
    """``obj`` as one strict JSON object on one line of the command's stdout: NaN and infinities become null
    (strict parsers reject the bare tokens), paths and other objects become strings.

    The command's stdout is ``args.result_stream``, saved by :func:`cianet.cli.result_stdout`, which sends
    whatever else the work prints on stdout to stderr while a ``--json`` command runs."""
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.utils.atomic import strict_json

    stream = getattr(args, "result_stream", None) or sys.stdout
    print(json.dumps(strict_json(obj), allow_nan=False, default=str), file=stream, flush=True)


def run_result(run_dir) -> dict[str, Any]:
    """What a finished training run produced, for ``--json``: its folder and files, and the test metrics of its
    ``metrics.json`` (test images and boxes, AUC per class and mean, localization accuracy per T(IoU))."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "run": run_dir,
        "checkpoint": run_dir / "checkpoint.pt",
        "metrics_file": run_dir / "metrics.json",
        **{k: metrics.get(k) for k in ("n_images", "n_boxes", "auc", "localization")},
    }


def add_root_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", required=True, help="data folder (metadata tables and images; README, Data sets)")
    add_dataset_args(p)
    p.add_argument(
        "--entry-csv",
        default=None,
        help="entry CSV to use instead of Data_Entry_2017[_v2020].csv (relative to the data root or absolute)",
    )
    p.add_argument("--bbox-csv", default=None, help="box CSV to use instead of BBox_List_2017.csv")
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail if any image file is missing, a box names an image not in the entry CSV, or a box lies "
        "outside its image or names a finding its image lacks (without it: a warning)",
    )


def add_dataset_flag(
    p, default: str | None = None, help: str = "layout of the data root (default: detected from its files)"
) -> None:
    """``--dataset``: its choices are config's (data.dataset), so a new layout needs no edit here."""
    p.add_argument("--dataset", choices=choices("data.dataset"), default=default, help=help)


def add_dataset_args(p) -> None:
    """``--dataset`` and the reader-box merge, for every command reading a data root."""
    add_dataset_flag(p)
    p.add_argument(
        "--box-merge",
        choices=choices("data.box_merge"),
        default=None,
        help="merge readers' boxes of one finding (VinDr-CXR; csv with a reader column): default mean",
    )
    p.add_argument("--merge-iou", type=float, default=None, help="IoU linking readers' boxes (default 0.4)")
    p.add_argument(
        "--label-map",
        choices=choices("data.label_map"),
        default=None,
        help="map the data set's classes to ChestX-ray14's (cross-data-set evaluation; docs/method.md)",
    )


def recipe_default(section: str, key: str) -> str:
    """``"paper X, tiny Y"``: a config value in the two built-in recipes, for the help of a flag that sets it."""
    values = []
    for recipe in ("paper", "tiny"):
        try:
            values.append(f"{recipe} {getattr(getattr(_recipe(recipe), section), key)}")
        except (AttributeError, ValueError, OSError):
            continue
    return ", ".join(values) or "the recipe's"


_RECIPES: dict = {}


def _recipe(name: str):
    if name not in _RECIPES:  # read once per process however many flags ask
        _RECIPES[name] = load_config(name)
    return _RECIPES[name]


def add_config_args(p: argparse.ArgumentParser, default_config: str = "paper") -> None:
    g = p.add_argument_group("configuration (flags override the config file; --set overrides anything)")
    shown = default_config or "paper; `experiment evidence` on phantoms: tiny"
    g.add_argument("--config", default=default_config, help=f"recipe name (paper, tiny) or YAML file (default {shown})")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config value, e.g. --set optim.lr=0.01 (repeatable)",
    )
    g.add_argument("--data-root", help="data folder (layout: --dataset)")
    add_dataset_args(g)
    g.add_argument("--entry-csv", help="Data_Entry csv (default: found at the data root)")
    g.add_argument("--bbox-csv", help="BBox_List csv (default: found at the data root)")
    g.add_argument("--cache", help="image cache folder from `cianet prepare` (same --image-size)")
    command = p.prog.split()[-1]  # the help of each command says its own defaults, not the others'
    align = command == "train-align"
    g.add_argument(
        "--out",
        help={
            "train": "the run folder (default: the recipe's run.out, " + recipe_default("run", "out") + ")",
            "train-align": "output folder (default runs/align)",
            "experiment": "output folder (default runs/NAME)",
        }.get(command, "output folder"),
    )
    g.add_argument("--image-size", type=int, help="data.image_size: network input size (multiple of 32)")
    sec = "align" if align else "optim"
    g.add_argument(
        "--backbone",
        help=f"{'align' if align else 'model'}.backbone: resnet18 | resnet34 | resnet50 | "
        f"resnet101 (default: {recipe_default('align' if align else 'model', 'backbone')})",
    )
    g.add_argument("--epochs", type=int, help=f"{sec}.epochs (default: {recipe_default(sec, 'epochs')})")
    g.add_argument("--batch-size", type=int, help=f"{sec}.batch_size (default: {recipe_default(sec, 'batch_size')})")
    g.add_argument("--lr", type=float, help=f"{sec}.lr (default: {recipe_default(sec, 'lr')})")
    g.add_argument(
        "--workers", type=int, help=f"DataLoader worker processes (default: {recipe_default('data', 'workers')})"
    )
    g.add_argument(
        "--device", help="run.device: auto | cpu | cuda | cuda:N (default: the recipe's; paper auto, tiny cpu)"
    )
    g.add_argument("--seed", type=int, help="run.seed (default: the recipe's, 0)")
    g.add_argument("--max-images", type=int, help="cap the image lists (reduced runs)")
    g.add_argument("--canonical", help="canonical chest PNG (`cianet canonical`)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """``--precision`` (run.precision) for the commands that train CIA-Net or the baseline."""
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        help="run.precision: bf16 = bfloat16 autocast, auto = bf16 on CPUs with native bfloat16 "
        "(default: float32 on CPU, optim.amp's float16 on CUDA)",
    )


def _by_field(*keys: str) -> dict[str, str]:
    """{dest: key} for flags whose argparse dest is their config field's name."""
    return {key.split(".")[1]: key for key in keys}


#: flag (its argparse dest) -> the config key it sets to its value, for every command building a run config
FLAG_KEYS: dict[str, str] = {
    **_by_field(
        "data.data_root",
        "data.entry_csv",
        "data.bbox_csv",
        "data.cache",
        "data.dataset",
        "data.box_merge",
        "data.merge_iou",
        "data.label_map",
        "data.image_size",
        "data.workers",
        "data.max_images",
        "run.out",
        "run.device",
        "run.precision",
        "run.seed",
        "model.backbone",
        "model.pretrained",
    ),
    "model": "model.kind",
    **_by_field("optim.epochs", "optim.batch_size", "optim.lr", "align.canonical"),
    "align_pretrained": "align.pretrained",
    "negatives": "negatives.strategy",
    **_by_field(
        "negatives.hash_index",
        "negatives.prior_fallback",
        "protocol.fold",
        "protocol.annotated_ratio",
        "protocol.unannotated_ratio",
        "protocol.splits",
    ),
}
#: switch (store_true dest) -> (config key, the value it sets)
SWITCH_KEYS: dict[str, tuple[str, Any]] = {
    "unannotated_only": ("protocol.unannotated_only", True),
    "allow_patient_overlap": ("protocol.allow_patient_overlap", True),
    "official": ("protocol.official", True),
    "classification": ("protocol.kind", "classification"),
}


def _set_key(cfg, key: str, value: Any) -> None:
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)


def config_from_args(args: argparse.Namespace):
    """The run config: the recipe of ``--config``, then the flags given, then every ``--set``."""
    cfg = load_config(args.config)
    flags = {}  # config key -> how the user set it, for --resume to check against the run's own recipe
    for attr, key in FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            _set_key(cfg, key, value)
            flags[key] = f"--{attr.replace('_', '-')} {value}"
    for attr, (key, value) in SWITCH_KEYS.items():
        if getattr(args, attr, False):
            _set_key(cfg, key, value)
            flags[key] = f"--{attr.replace('_', '-')}"
    if getattr(args, "align", None) is not None:
        cfg.align.checkpoint = None if args.align.lower() == "none" else args.align
        flags["align.checkpoint"] = "--align"
    if args.no_progress:  # how a run reports, not what it trains: never compared on --resume
        cfg.run.progress = False
    for item in args.overrides:
        flags[item.split("=", 1)[0].strip()] = f"--set {item}"
    args.given = flags
    apply_overrides(cfg, args.overrides)
    validate_config(cfg, "command line", flags)  # the flags' values too: --epochs -1, --lr nan, --device tpu
    check_paths_exist(cfg)  # --splits /nope.json is an error, never replaced by a split made on the fly
    return cfg


PRETRAINED_HELP = (
    "initial backbone weights: imagenet (torchvision's, from the torch hub cache or downloaded; an "
    "error when neither works), none (random init) or PATH (a state-dict file of the backbone)"
)

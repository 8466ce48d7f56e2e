"""``cianet bundle``: pack a trained run into one model file (weights, alignment, negative bank)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cianet.commands.common import add_dataset_flag, add_json_arg, print_json
from cianet.config import CANONICAL_CHEST
from cianet.errors import MissingPathError, UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bundle",
        help="pack a trained run into one model file (weights, alignment, negative bank)",
        description=(
            "Write a model bundle: the network and alignment weights, the canonical chest, labels, input size, "
            "normalization, per-class thresholds, the run's config, and a negative bank: N No Finding training "
            "images (never the run's test images) with their hash codes and attention maps M-, so that "
            "prediction needs neither the data set nor a second pass through the attention trunk. The file is "
            "safetensors with a JSON header (readable without torch) and a model card; it holds no local paths "
            "and no training image names. `cianet bundle info FILE` shows the card."
        ),
    )
    p.add_argument("action", nargs="?", choices=["info"], help="info: show the model card of the bundle FILE")
    p.add_argument("file", nargs="?", metavar="FILE", help="bundle file (with info)")
    p.add_argument("--run", help="training run folder (checkpoint.pt, config.yaml, split.json)")
    p.add_argument("--out", help="bundle file to write (e.g. model.cianet)")
    p.add_argument("--name", help="model name in the card (default: the run folder's name)")
    p.add_argument("--model-version", default="1", help="model version in the card (default 1)")
    add_json_arg(p, "the result (info: the bundle's whole header; writing: what was written)")
    p.add_argument(
        "--bank-size",
        dest="negatives",
        type=int,
        default=1000,
        metavar="N",
        help="negatives in the bank (default 1000, or all if fewer)",
    )
    # the older spelling; elsewhere --negatives is the pairing strategy (train)
    p.add_argument("--negatives", dest="negatives", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data-root", help="the run's data folder (default: from the run config)")
    add_dataset_flag(p, default=None, help="layout of the data folder (default: the run's data.dataset)")
    p.add_argument("--cache", help="image cache folder (default: from the run config, when it exists)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="image probability from which a class's boxes are reported (default 0.5)",
    )
    p.add_argument(
        "--with-negative-images",
        action="store_true",
        help="also store the 8-bit negatives (N x S x S bytes) for Predictor(mode='recompute')",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the negatives' random choice (default 0)")
    p.add_argument(
        "--device", default="auto", help="device computing the bank: auto | cpu | cuda | cuda:N (default auto)"
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="fp32",
        help="arithmetic of the bank's attention maps (default fp32: the stored maps do not depend on "
        "the machine; bf16: bfloat16 autocast; auto: bf16 on CPUs with native bfloat16)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out when it exists (only that file; without it an existing file is refused)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bundle)


def cmd_bundle(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.inference.bundle import bundle_from_run
    from cianet.run.bundle_file import save_bundle

    if args.action == "info":
        return bundle_info(args)
    if args.file is not None:
        raise UsageError(f"unexpected argument {args.file!r} (did you mean `cianet bundle info {args.file}`?)")
    if not args.run or not args.out:
        raise UsageError("give --run RUN and --out FILE to write a bundle, or `info FILE` to show one")
    if args.negatives < 1:
        raise UsageError(f"--bank-size must be >= 1, got {args.negatives}")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {args.threshold}")
    from cianet.utils.output_folders import refuse_replace

    refuse_replace(args.out, args.overwrite)
    bundle = bundle_from_run(
        args.run,
        n_negatives=args.negatives,
        data_root=args.data_root,
        cache=args.cache,
        thresholds=args.threshold,
        include_images=args.with_negative_images,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        precision=args.precision,
        card_name=args.name,
        card_version=args.model_version,
        dataset=args.dataset,
    )
    path = save_bundle(bundle, args.out)
    bank = bundle["negatives"]
    size_mb = path.stat().st_size / 1e6
    if args.json:
        print_json(
            args,
            {
                "path": str(path),
                "size_mb": round(size_mb, 1),
                "kind": bundle["kind"],
                "input_size": bundle["input_size"],
                "alignment": bundle["alignment"] is not None,
                "negatives": len(bank["names"]),
                "strategy": bank["strategy"],
                "name": bundle["card"].get("name"),
                "version": bundle["card"].get("version"),
            },
        )
        return 0
    print(
        f"wrote {path} ({size_mb:.1f} MB): {bundle['kind']}, {bundle['input_size']} px, "
        f"alignment {'yes' if bundle['alignment'] else 'no'}, {len(bank['names'])} negatives "
        f"({bank['strategy']})"
    )
    return 0


def bundle_info(args: argparse.Namespace) -> int:
    """``cianet bundle info FILE``: the model card (format 2 headers are read without torch)."""
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.inference.model_card import format_card
    from cianet.run.bundle_format import is_safetensors, read_header

    if not args.file:
        raise UsageError("bundle info needs the bundle FILE")
    path = Path(args.file)
    if not path.is_file():
        raise MissingPathError(f"bundle {path} does not exist")
    if is_safetensors(path):
        from cianet.run.bundle_file import load_bundle

        desc = read_header(path)  # the header's checks first: they refuse a crafted file before any allocation
        load_bundle(path)  # then everything predict checks: the tensors, their SHA-256, the label sets
        header, tensors = desc["bundle"], desc["tensors"]
    else:  # format 1: a torch.save dict, loaded safely; it has no card
        from cianet.run.bundle_file import load_bundle

        b = load_bundle(path)
        header = {k: v for k, v in b.items() if k not in ("model", CANONICAL_CHEST, "negatives", "alignment")}
        header["alignment"] = b["alignment"] is not None
        header["negatives"] = {"count": len(b["negatives"]["names"]), "strategy": b["negatives"]["strategy"]}
        tensors = None
    if args.json:
        print_json(args, header)
        return 0
    print(printable(format_card(header, tensors)))
    if tensors is not None:
        print(
            "tensor data: SHA-256 verified"
            if desc["checksum"]
            else "tensor data: no SHA-256 stored (a bundle from before checksums): not verified; rebuild it to add one"
        )
    if tensors is None:
        print(
            f"note: {path} is a format-1 bundle (torch.save, no model card; its config and bank may hold local "
            "paths and training image names): rebuild it with `cianet bundle --run RUN --out FILE`"
        )
    return 0


def printable(text: str) -> str:
    """``text`` without control characters (ANSI escapes, carriage returns, bells) but its line breaks: a card
    is data from a file, and never drives the terminal."""
    return "".join(c for c in text if c in "\n\t" or (c.isprintable() and c not in "\u2028\u2029"))

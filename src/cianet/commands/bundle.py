"""``cianet bundle``: pack a trained run into one model file (weights, alignment, negative bank)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bundle", help="pack a trained run into one model file (weights, alignment, negative bank)",
        description=(
            "Write a model bundle: the network and alignment weights, the canonical chest, labels, input size, "
            "normalization, per-class thresholds, the run's config, and a negative bank: N No Finding training "
            "images (never the run's test images) with their hash codes and attention maps M-, so that "
            "prediction needs neither the data set nor a second pass through the attention trunk."
        ),
    )
    p.add_argument("--run", required=True, help="training run folder (checkpoint.pt, config.yaml, split.json)")
    p.add_argument("--out", required=True, help="bundle file to write (e.g. model.cianet)")
    p.add_argument("--negatives", type=int, default=1000, metavar="N",
                   help="negatives in the bank (default 1000, or all if fewer)")
    p.add_argument("--data-root", help="the run's data folder (default: from the run config)")
    p.add_argument("--cache", help="image cache folder (default: from the run config, when it exists)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="image probability from which a class's boxes are reported (default 0.5)")
    p.add_argument("--with-negative-images", action="store_true",
                   help="also store the 8-bit negatives (N x S x S bytes) for Predictor(mode='recompute')")
    p.add_argument("--seed", type=int, default=0, help="seed of the negatives' random choice (default 0)")
    p.add_argument("--device", default="cpu", help="device computing the bank (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bundle)


def cmd_bundle(args: argparse.Namespace) -> int:
    from cianet.errors import UsageError
    from cianet.inference.bundle import bundle_from_run
    from cianet.run.bundle_file import save_bundle

    if args.negatives < 1:
        raise UsageError(f"--negatives must be >= 1, got {args.negatives}")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {args.threshold}")
    bundle = bundle_from_run(args.run, n_negatives=args.negatives, data_root=args.data_root, cache=args.cache,
                             thresholds=args.threshold, include_images=args.with_negative_images, seed=args.seed,
                             device=args.device, progress=not args.no_progress)
    path = save_bundle(bundle, args.out)
    bank = bundle["negatives"]
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.1f} MB): {bundle['kind']}, {bundle['input_size']} px, "
          f"alignment {'yes' if bundle['alignment'] else 'no'}, {len(bank['names'])} negatives "
          f"({bank['strategy']})")
    return 0

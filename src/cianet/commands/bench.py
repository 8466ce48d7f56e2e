"""``cianet bench``: measure training, data loading, negative pairing and inference speed in one process."""

from __future__ import annotations

import argparse
import sys

from cianet.commands.common import add_json_arg, print_json
from cianet.errors import UsageError

PARTS = ("matmul", "train", "data", "pairing", "predict")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure training, data pipeline, pairing and predict speed (table or --json)",
        description="Measure, in one process, the machine's float32 matmul rate, the training step throughput "
        "of the baseline and CIA-Net with the achieved FLOP rate as a fraction of the matmul rate, the data "
        "pipeline (uint8 cache vs PNG decoding, share of the tiny recipe's loop spent waiting for data), "
        "negative pairing (vectorized vs naive) and predict (negative bank vs recomputing M-, each in a fresh "
        "process with its peak memory). The full run takes a few minutes on 2 CPU cores; --quick takes seconds.",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes everywhere (seconds; for tests)")
    add_json_arg(p, "the measurements (instead of the table)")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    p.add_argument(
        "--only", default=None, metavar="PARTS", help=f"comma-separated subset of {','.join(PARTS)} (default: all)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads for every part (default: torch's)")
    p.add_argument(
        "--device", default=None, help="device of the matmul and training parts (default cpu; cuda: AMP as the recipe)"
    )
    p.add_argument("--backbone", default=None, help="training backbone (default resnet18)")
    p.add_argument(
        "--image-size",
        "--size",
        dest="size",
        type=int,
        default=None,
        help="training input size, multiple of 32 (default 256)",
    )
    p.add_argument("--batch-size", "--batch", dest="batch", type=int, default=None, help="training batch (default 16)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per model (default 3)")
    p.add_argument("--no-channels-last", action="store_true", help="main training figures in NCHW layout")
    p.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the side-by-side variants (other memory layout, direct test-time head, predict "
        "without decoding ahead)",
    )
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the tiny recipe's)")
    p.add_argument("--bank-codes", type=int, default=None, help="pairing bank size (default 60000)")
    p.add_argument("--queries", type=int, default=None, help="pairing queries (default 112120, one NIH epoch)")
    p.add_argument("--predict-backbone", default=None, help="predict backbone (default resnet50)")
    p.add_argument("--predict-size", type=int, default=None, help="predict input size (default 512)")
    p.add_argument("--predict-batch", type=int, default=None, help="predict batch (default 4)")
    p.add_argument("--predict-images", type=int, default=None, help="timed predict images per mode (default 8)")
    p.add_argument(
        "--predict-folder-images",
        type=int,
        default=None,
        help="real-size PNGs `predict` runs over for the stage breakdown (default 64)",
    )
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.bench.speed import BenchSettings

    s = BenchSettings.quick() if args.quick else BenchSettings()
    if args.only:
        parts = tuple(x.strip() for x in args.only.split(",") if x.strip())
        bad = [x for x in parts if x not in PARTS]
        if bad or not parts:
            raise UsageError(
                f"--only: unknown part(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(PARTS)}"
            )
        s.parts = parts
    pairs = {
        "threads": "threads",
        "device": "device",
        "backbone": "backbone",
        "size": "size",
        "batch": "batch",
        "steps": "steps",
        "workers": "workers",
        "bank_codes": "bank_codes",
        "queries": "queries",
        "predict_backbone": "predict_backbone",
        "predict_size": "predict_size",
        "predict_batch": "predict_batch",
        "predict_images": "predict_images",
        "predict_folder_images": "predict_folder_images",
    }
    for arg, fieldname in pairs.items():
        value = getattr(args, arg)
        if value is not None:
            setattr(s, fieldname, value)
    for name in ("size", "predict_size"):
        if getattr(s, name) % 32:
            raise UsageError(f"--{name.replace('_', '-')} must be a multiple of 32, got {getattr(s, name)}")
    for name in ("batch", "steps", "predict_batch", "predict_images", "predict_folder_images", "bank_codes", "queries"):
        if getattr(s, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(s, name)}")
    if s.device != "cpu":
        import torch

        if torch.device(s.device).type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {s.device}: CUDA is not available on this machine")
    if args.no_channels_last:
        s.channels_last = False
    if args.no_compare:
        s.compare_layouts = s.compare_heads = s.compare_prefetch = False
    return s


def run(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.bench.speed import format_table, run_bench

    settings = settings_from_args(args)
    result = run_bench(settings, log=lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True))
    if args.out:
        from cianet.utils.atomic import atomic_write_json

        atomic_write_json(args.out, result)
    if args.json:
        print_json(args, result)
    else:
        print(format_table(result))
    return 0

"""``cianet hash``: the perceptual-hash index of the No Finding images (paper 4.3.2, "Sim" negatives)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cianet.commands.common import add_dataset_flag, add_json_arg, print_json
from cianet.errors import MissingPathError, UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "hash",
        help="build the perceptual-hash index of the No Finding images (negative pairing)",
        description=(
            "Resize every No Finding image to SIZE x SIZE (area averaging), flatten and L2-normalize it, and "
            "save the codes with image names and patient ids as an .npz index. Images are read from the image "
            "cache when given (faster), else decoded from their files."
        ),
    )
    p.add_argument("--data-root", required=True, help="data folder (metadata table and images; layout: --dataset)")
    p.add_argument("--out", required=True, help="output index file (.npz)")
    p.add_argument("--cache", default=None, help="image cache folder from `cianet prepare` (read instead of files)")
    p.add_argument(
        "--hash-size", dest="size", type=int, default=16, help="hash side: codes have SIZE*SIZE entries (default 16)"
    )
    # --size means the image size on every other command: here it is refused with the new name, never misread
    p.add_argument("--size", dest="old_size", default=None, help=argparse.SUPPRESS)
    p.add_argument("--entry-csv", default=None, help="entry CSV to use instead of Data_Entry_2017[_v2020].csv")
    add_dataset_flag(p, default="auto")
    p.add_argument("--workers", type=int, default=4, help="threads decoding image files (default 4)")
    p.add_argument("--center", action="store_true", help="subtract each code's mean before normalizing")
    p.add_argument(
        "--align",
        default=None,
        metavar="ALIGN.pt",
        help="hash the images this alignment network aligns (for runs with negatives.aligned_codes "
        "and this align.checkpoint)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="with --align: the run's data.image_size, at which images are read and aligned "
        "(default: the cache's size)",
    )
    p.add_argument("--device", default="auto", help="with --align: where the alignment network runs (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out when it exists (only that file; without it an existing file is refused)",
    )
    add_json_arg(p, "the index written and its counts")
    p.set_defaults(func=cmd_hash)


def cmd_hash(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.run.pairing import hash_data_root
    from cianet.utils.output_folders import refuse_replace

    if args.old_size is not None:
        raise UsageError(
            f"--size {args.old_size}: on `cianet hash` the hash side is --hash-size (--size is the "
            "image size on every other command; the hash reads the images at the cache's size)"
        )
    refuse_replace(args.out, args.overwrite)

    if args.align is None and args.image_size is not None:
        raise UsageError("--image-size only applies with --align")
    if args.align is not None and not Path(args.align).exists():
        raise MissingPathError(f"alignment checkpoint {args.align} (--align) does not exist")
    res = hash_data_root(
        args.data_root,
        args.out,
        cache=args.cache,
        size=args.size,
        entry_csv=args.entry_csv,
        workers=args.workers,
        center=args.center,
        progress=False if args.no_progress else None,
        align=args.align,
        image_size=args.image_size,
        device=args.device,
        dataset=args.dataset,
    )
    if args.json:
        print_json(
            args,
            {
                "out": args.out,
                "images": len(res["index"]),
                "patients": res["patients"],
                "hash_size": args.size,
                "aligned": args.align is not None,
                "image_size": res["index"].meta.get("image_size") if args.align else None,
                "absent": res["absent"],
                "failed": len(res["failed"]),
            },
        )
        return 0
    kind = f", aligned at {res['index'].meta['image_size']} px" if args.align else ""
    print(
        f"hashed {len(res['index']):,} No Finding images of {res['patients']:,} patients "
        f"({args.size}x{args.size} codes{kind}) -> {args.out}"
    )
    if res["absent"]:
        print(f"skipped {res['absent']:,} No Finding images without a file or cache entry", file=sys.stderr)
    if res["failed"]:
        print(f"skipped {len(res['failed']):,} unreadable images, e.g. {res['failed'][0]}", file=sys.stderr)
    return 0

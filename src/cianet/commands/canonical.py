"""``cianet canonical``: build the canonical chest (mean No Finding image cropped to the lungs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cianet.commands.common import add_dataset_flag, add_json_arg, print_json
from cianet.config import CANONICAL_CHEST


def parse_crop(text: str) -> tuple[int, int, int, int]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"--crop must be four integers x0,y0,x1,y1, got {text!r}")
    return vals  # type: ignore[return-value]


def cmd_canonical(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.data.canonical import make_canonical
    from cianet.utils.output_folders import refuse_replace

    out = Path(args.out)
    for path in (out, out.with_name(f"{out.stem}_mean.png"), out.with_suffix(".json")):
        refuse_replace(path, args.overwrite)

    res = make_canonical(
        args.data_root,
        args.out,
        n=args.n,
        size=args.size,
        seed=args.seed,
        crop=args.crop,
        cache=args.cache,
        entry_csv=args.entry_csv,
        progress=False if args.no_progress else (True if args.progress else None),
        dataset=args.dataset,
    )
    crop, how = tuple(res["crop"]), res["crop_source"]
    if how == "fallback-central":
        print(
            f"cianet canonical: warning: lungs not found on the mean image; using the central crop {crop} "
            "(pass --crop x0,y0,x1,y1 to override)",
            file=sys.stderr,
        )
    paths = res["paths"]
    if args.json:
        print_json(
            args,
            {
                CANONICAL_CHEST: paths[CANONICAL_CHEST],
                "mean": paths["mean"],
                "json": paths["json"],
                "size": res["size"],
                "n_used": res["n_used"],
                "crop": list(crop),
                "crop_source": how,
            },
        )
        return 0
    print(
        f"wrote {paths[CANONICAL_CHEST]} ({args.size}x{args.size}, mean of {res['n_used']} No Finding images, "
        f"crop {crop} [{how}]), {paths['mean'].name}, {paths['json'].name}"
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "canonical",
        help="build the canonical chest: mean of random No Finding images cropped to the lungs",
        description="Average --n random No Finding images at --image-size, find the lungs' box in the mean and "
        "write OUT.png (the canonical chest the alignment network is trained towards), OUT_mean.png "
        "(the whole mean) and OUT.json (the crop, the images used, the settings).",
    )
    p.add_argument("--data-root", required=True, help="data folder (metadata table and images; layout: --dataset)")
    p.add_argument("--entry-csv", default=None, help="entry CSV instead of Data_Entry_2017[_v2020].csv")
    add_dataset_flag(p, default="auto")
    p.add_argument("--n", type=int, default=500, help="No Finding images to average (default 500, as in the paper)")
    p.add_argument(
        "--image-size",
        "--size",
        dest="size",
        type=int,
        default=512,
        help="side of the mean and canonical images (default 512)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random image draw (default 0)")
    p.add_argument(
        "--out", required=True, help="canonical PNG to write; <stem>_mean.png and <stem>.json are written beside it"
    )
    p.add_argument(
        "--crop",
        type=parse_crop,
        default=None,
        help="x0,y0,x1,y1 crop on the mean image (--image-size square) instead of the automatic lung box",
    )
    p.add_argument("--cache", default=None, help="image cache folder (`cianet prepare`) to read images from")
    p.add_argument("--progress", action="store_true", help="force the progress bar")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out when it exists (only that file and its _mean.png and .json siblings; without it an "
        "existing file is refused)",
    )
    add_json_arg(p, "the files written, the images averaged and the crop")
    p.set_defaults(func=cmd_canonical)

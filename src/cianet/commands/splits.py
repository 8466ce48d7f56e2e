"""``cianet splits``: write the seeded patient-disjoint splits and localization folds (JSON)."""

from __future__ import annotations

import argparse

from cianet.commands.common import add_json_arg, add_root_args, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "splits",
        help="write seeded patient-disjoint splits and localization folds (JSON)",
        description="Write one JSON file with the classification split (train/val/test by patient, --ratios, or "
        "NIH's official lists with --official) and the k patient-grouped localization folds of the "
        "annotated images, from --seed. `cianet train --splits FILE` trains on it, so that runs on "
        "several machines share one split.",
    )
    add_root_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random splits and folds (default 0)")
    p.add_argument("--out", required=True, help="splits JSON to write (atomically)")
    p.add_argument(
        "--official",
        action="store_true",
        help="classification from train_val_list.txt / test_list.txt (val carved from train_val by patient)",
    )
    p.add_argument("--n-folds", dest="folds", type=int, default=5, help="number of localization folds (default 5)")
    # the older spelling; elsewhere --folds is a list of folds (experiment)
    p.add_argument("--folds", dest="folds", type=int, help=argparse.SUPPRESS)
    p.add_argument(
        "--ratios",
        type=float,
        nargs=3,
        default=(0.7, 0.1, 0.2),
        metavar=("TRAIN", "VAL", "TEST"),
        help="classification split shares of images (default 0.7 0.1 0.2)",
    )
    p.add_argument("--only-present", action="store_true", help="split only the images whose file was found")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out when it exists (only that file; without it an existing file is refused)",
    )
    add_json_arg(p, "the file written and its counts")
    p.set_defaults(func=cmd_splits)


def cmd_splits(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.data.splits import write_root_splits
    from cianet.utils.output_folders import refuse_replace

    refuse_replace(args.out, args.overwrite)

    splits = write_root_splits(
        args.data_root,
        args.out,
        seed=args.seed,
        k=args.folds,
        official=args.official,
        ratios=args.ratios,
        only_present=args.only_present,
        entry_csv=args.entry_csv,
        bbox_csv=args.bbox_csv,
        strict=args.strict,
        dataset=args.dataset or "auto",
        box_merge=args.box_merge or "mean",
        merge_iou=0.4 if args.merge_iou is None else args.merge_iou,
        label_map=args.label_map,
    )
    c = splits["counts"]
    if args.json:
        print_json(
            args,
            {
                "out": args.out,
                "seed": splits["seed"],
                "official": splits["official"],
                "dataset": splits["dataset"],
                "images": splits["images"],
                "counts": c,
            },
        )
        return 0
    cls = c["classification"]
    print(
        f"wrote {args.out}: classification train {cls['train']:,} / val {cls['val']:,} / test {cls['test']:,}"
        f" ({'official lists' if args.official else 'random by patient'}, seed {args.seed}); "
        f"localization folds {c['localization_folds']}"
    )
    return 0

"""``cianet index`` (summarize an NIH data root) and ``cianet splits`` (write the seeded splits JSON)."""

from __future__ import annotations

import argparse
import json


def _add_root_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", required=True, help="folder holding Data_Entry_2017*.csv[.gz] and the images")
    p.add_argument("--entry-csv", default=None, help="entry CSV to use instead of Data_Entry_2017[_v2020].csv "
                   "(relative to the data root or absolute)")
    p.add_argument("--bbox-csv", default=None, help="box CSV to use instead of BBox_List_2017.csv")
    p.add_argument("--strict", action="store_true",
                   help="fail if any image file is missing or a box names an image not in the entry CSV")


def _load(args: argparse.Namespace):
    from cianet.data.nih import NIHIndex

    return NIHIndex.from_root(args.data_root, strict=args.strict, entry_csv=args.entry_csv, bbox_csv=args.bbox_csv)


def _print_summary(s: dict) -> None:
    print(f"data root        {s['root']}")
    print(f"metadata         {s['entry_csv']}" + (f", {s['bbox_csv']}" if s["bbox_csv"] else " (no box list)"))
    print(f"images           {s['images']:,} of {s['patients']:,} patients ({s['no_finding']:,} No Finding)")
    print(f"image files      {s['found_files']:,} found, {s['missing_files']:,} missing"
          + (f", {s['duplicate_files']:,} duplicates ignored" if s["duplicate_files"] else ""))
    print(f"boxes            {s['boxes']:,} on {s['annotated_images']:,} annotated images"
          + (f" ({s['orphan_boxes']} boxes of unknown images skipped)" if s["orphan_boxes"] else ""))
    for lab, n in s["boxes_per_class"].items():
        print(f"  {lab:<20}{n:>6,}")
    print("images per label")
    for lab, n in s["per_label"].items():
        print(f"  {lab:<20}{n:>6,}")
    if s["official_train_val"] is not None or s["official_test"] is not None:
        print(f"official lists   train_val {s['official_train_val']}, test {s['official_test']}")


def cmd_index(args: argparse.Namespace) -> int:
    summary = _load(args).summary()
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from cianet.data.splits import make_splits, write_splits

    index = _load(args)
    if args.only_present:
        present = index.present()
        if not present:
            raise FileNotFoundError(f"{index.root}: --only-present, but no image file was found below it")
        index = index.restrict(present)
    splits = make_splits(index, seed=args.seed, k=args.folds, official=args.official, ratios=args.ratios)
    write_splits(args.out, splits)
    c = splits["counts"]
    cls = c["classification"]
    print(f"wrote {args.out}: classification train {cls['train']:,} / val {cls['val']:,} / test {cls['test']:,}"
          f" ({'official lists' if args.official else 'random by patient'}, seed {args.seed}); "
          f"localization folds {c['localization_folds']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("index", help="summarize an NIH ChestX-ray14 data root (labels, boxes, files)")
    _add_root_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=cmd_index)

    p = subparsers.add_parser("splits", help="write seeded patient-disjoint splits and localization folds (JSON)")
    _add_root_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="splits JSON to write (atomically)")
    p.add_argument("--official", action="store_true",
                   help="classification from train_val_list.txt / test_list.txt (val carved from train_val by patient)")
    p.add_argument("--folds", type=int, default=5, help="number of localization folds (default 5)")
    p.add_argument("--ratios", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"),
                   help="classification split shares of images (default 0.7 0.1 0.2)")
    p.add_argument("--only-present", action="store_true", help="split only the images whose file was found")
    p.set_defaults(func=cmd_splits)

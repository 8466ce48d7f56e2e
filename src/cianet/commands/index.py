"""``cianet index``: summarize a data root of any layout (labels, boxes, files)."""

from __future__ import annotations

import argparse

from cianet.commands.common import add_json_arg, add_root_args, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "index",
        help="summarize a data root (NIH, RSNA, VinDr-CXR, CSV): labels, boxes, files",
        description="Read a data root's metadata tables (its layout detected, or --dataset) and print a summary: "
        "images, patients, No Finding images, annotated images and boxes per class, image files missing "
        "under the root, label counts. Nothing is written. --strict turns the warnings about boxes "
        "outside their image or of an unknown class into errors.",
    )
    add_root_args(p)
    add_json_arg(p, "the summary (instead of the table)")
    p.set_defaults(func=cmd_index)


def print_summary(s: dict) -> None:
    print(f"data root        {s['root']} ({s['dataset']} layout)")
    boxes_file = f", {s['bbox_csv']}" if s["bbox_csv"] and s["bbox_csv"] != s["entry_csv"] else ""
    print(f"metadata         {s['entry_csv']}" + (boxes_file if s["bbox_csv"] else " (no box list)"))
    print(
        f"images           {s['images']:,} of {s['patients']:,} patients ({s['no_finding']:,} No Finding)"
        + (f", {s['rows']:,} table rows" if "rows" in s else "")
    )
    print(
        f"image files      {s['found_files']:,} found, {s['missing_files']:,} missing"
        + (f", {s['duplicate_files']:,} duplicates ignored" if s["duplicate_files"] else "")
    )
    print(
        f"boxes            {s['boxes']:,} on {s['annotated_images']:,} annotated images"
        + (f" ({s['orphan_boxes']} boxes of unknown images skipped)" if s["orphan_boxes"] else "")
    )
    if "readers" in s:
        merge = s.get("box_merge") or {}
        print(
            f"readers          {s['readers']:,}; {s['reader_boxes']:,} reader boxes merged by "
            f"{merge.get('rule')} at IoU {merge.get('iou')}"
        )
    for lab, n in s["boxes_per_class"].items():
        print(f"  {lab:<20}{n:>6,}")
    print("images per label")
    for lab, n in s["per_label"].items():
        print(f"  {lab:<20}{n:>6,}")
    if s.get("pool_only"):
        print(f"pool-only        {s['pool_only']:,} No Finding images that serve only as negatives (pool_only.txt)")
    if s.get("with_prior") is None:
        print(f"prior studies    {s.get('priors_note', 'none')}")
    else:
        print(
            f"prior studies    earlier No Finding study of the same patient: {s['with_prior']:,} images, "
            f"{s['positives_with_prior']:,} with a finding, {s['boxed_with_prior']:,} with a box"
        )
        print(
            f"                 at any other follow-up: {s['with_prior_any']:,} images, "
            f"{s['positives_with_prior_any']:,} with a finding, {s['boxed_with_prior_any']:,} with a box"
        )
    if s["official_train_val"] is not None or s["official_test"] is not None:
        print(f"official lists   train_val {s['official_train_val']}, test {s['official_test']}")


def cmd_index(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.data.layouts import open_index

    summary = open_index(
        args.data_root,
        args.dataset or "auto",
        strict=args.strict,
        entry_csv=args.entry_csv,
        bbox_csv=args.bbox_csv,
        box_merge=args.box_merge or "mean",
        merge_iou=0.4 if args.merge_iou is None else args.merge_iou,
        label_map=args.label_map,
    ).summary()
    if args.json:
        print_json(args, summary)
    else:
        print_summary(summary)
    return 0

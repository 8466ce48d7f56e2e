"""``cianet view``: a static web page of predictions or of an evaluated run, to open from disk or mail."""

from __future__ import annotations

import argparse

from cianet.commands.common import add_json_arg, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "view", help="a self-contained web page of predictions or an evaluated run (SITE/index.html)",
        description=(
            "Turn `cianet predict` output folders and evaluated runs into one static page, SITE/index.html with "
            "its images in SITE/img: a gallery filtered and sorted by class and probability, boxes, heatmap and "
            "attention layers toggled on and off, ground truth beside the prediction where the data root is "
            "known, and the run's tables and plots. No server and no network: open the file in a browser, or "
            "zip the folder."
        ),
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="predict output folder or evaluated run folder")
    p.add_argument("--out", default=None, metavar="SITE", help="folder of the page (default: FIRST_DIR/site)")
    p.add_argument("--data-root", default=None,
                   help="data folder giving the ground truth (default: the run's, when a run is given)")
    p.add_argument("--max-images", type=int, default=1000, metavar="N", help="gallery size limit (default 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_arg(p)
    p.set_defaults(func=cmd_view)


def cmd_view(args: argparse.Namespace) -> int:
    import sys

    from cianet.evaluation.viewer import build_site

    res = build_site(args.dirs, args.out, data_root=args.data_root, max_images=args.max_images,
                     progress=False if args.no_progress else None)
    for note in res.notes[:10]:
        print(f"cianet view: note: {note}", file=sys.stderr)
    if args.json:
        print_json(args, {"index": str(res.index), "images": res.images, "tables": res.tables, "plots": res.plots,
                          "notes": res.notes})
    else:
        print(f"wrote {res.index}: {res.images} images, {res.tables} tables, {res.plots} plots")
    return 0

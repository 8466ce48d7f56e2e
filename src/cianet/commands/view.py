"""``cianet view``: a static web page of predictions or of an evaluated run, to open from disk or mail."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from cianet.commands.common import add_dataset_flag, add_json_arg, print_json
from cianet.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "view",
        help="a self-contained web page of predictions or an evaluated run (SITE/index.html)",
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
    p.add_argument(
        "--data-root",
        default=None,
        help="data folder giving the ground truth (default: the run's, when a run is given)",
    )
    p.add_argument(
        "--entry-csv",
        default=None,
        help="the ground truth's entry table, where the data root's own is not found "
        "(default: Data_Entry_2017[_v2020].csv or the layout's table at the data root)",
    )
    p.add_argument("--bbox-csv", default=None, help="the ground truth's box table (default: found at the data root)")
    add_dataset_flag(p, default=None, help="layout of --data-root (default: the run's, else detected from its files)")
    p.add_argument("--max-images", type=int, default=1000, metavar="N", help="gallery size limit (default 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace SITE/index.html even when `cianet view` did not write it (that file only)",
    )
    add_json_arg(p)
    p.set_defaults(func=cmd_view)


def cmd_view(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.evaluation.viewer import build_site, is_our_site, source_kind
    from cianet.utils.output_folders import MARKER, output_lock, refuse_replace, writing_into

    for folder in args.dirs:  # before any lock: a lock would create a folder that is not there
        source_kind(Path(folder))
    site = Path(args.out) if args.out else Path(args.dirs[0]) / "site"
    if (site / "index.html").exists() and not is_our_site(site) and not args.overwrite:
        raise InputError(
            f"--out {site}: holds an index.html that `cianet view` did not write; pass --overwrite to "
            "replace that file, or choose another folder"
        )
    if site.exists() and not site.is_dir():
        refuse_replace(site, False, "--out")  # a file where the page's folder goes: never replaced
    # a page inside a run or predict folder: that folder's lock, and its manifest lists the page's files
    host = site.parent if (site.parent / MARKER).is_file() or not args.out else None
    with contextlib.ExitStack() as stack:
        if host is not None:
            stack.enter_context(writing_into(host, "cianet view", _site_files(site, host)))
        stack.enter_context(output_lock(site, "cianet view"))
        res = build_site(
            args.dirs,
            args.out,
            data_root=args.data_root,
            max_images=args.max_images,
            progress=False if args.no_progress else None,
            tables={"entry_csv": args.entry_csv, "bbox_csv": args.bbox_csv, "dataset": args.dataset},
        )
    for note in res.notes[:10]:
        print(f"cianet view: note: {note}", file=sys.stderr)
    if args.json:
        print_json(
            args,
            {
                "index": str(res.index),
                "images": res.images,
                "tables": res.tables,
                "plots": res.plots,
                "notes": res.notes,
            },
        )
    else:
        print(f"wrote {res.index}: {res.images} images, {res.tables} tables, {res.plots} plots")
    return 0


class _site_files:
    """The page's files relative to ``host``, listed when iterated (after the page is written)."""

    def __init__(self, site, host) -> None:
        self.site, self.host = site, host

    def __iter__(self):
        if not self.site.is_dir():
            return iter(())
        return iter(
            str(p.relative_to(self.host))
            for p in sorted(self.site.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        )

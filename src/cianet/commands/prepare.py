"""``cianet prepare``: build (or resume, or verify) the pre-resized image cache of a data set."""

from __future__ import annotations

import argparse
import sys

from cianet.commands.common import add_dataset_flag, add_json_arg, print_json
from cianet.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="resize every image once into a memory-mapped cache (resumable)",
        description="Decode every image of the data root once, resize it (antialiased) to SIZE x SIZE uint8 and "
        "store it in CACHE/images.npy with CACHE/index.json. An interrupted run resumes when rerun with the "
        "same arguments. Unreadable files are listed under 'failed' in the index. With --verify (and no "
        "--data-root) only checks an existing cache.",
    )
    p.add_argument("--data-root", default=None, help="data folder (metadata tables and images; README, Data sets)")
    add_dataset_flag(p, default="auto")
    p.add_argument(
        "--image-size",
        "--size",
        dest="size",
        type=int,
        default=None,
        help="side of the cached images in pixels (e.g. 256, 512; the run's --image-size)",
    )
    p.add_argument("--cache", required=True, help="cache folder to create or resume")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all CPUs)")
    p.add_argument(
        "--entry-csv",
        default=None,
        help="entry CSV to use instead of Data_Entry_2017[_v2020].csv (relative to the data root or absolute)",
    )
    p.add_argument(
        "--all-files",
        action="store_true",
        help="cache every PNG/JPEG/DICOM file under the data root, without reading the metadata CSV",
    )
    p.add_argument("--chunk-size", type=int, default=512, help="images between progress commits (default 512)")
    p.add_argument(
        "--max-pixels", type=float, default=None, help="refuse images larger than this many pixels (default 100e6)"
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="start from scratch even if CACHE holds a complete or partial cache of the same images",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="check the cache (after building, if --data-root is given); exit status 1 on a problem",
    )
    p.add_argument(
        "--verify-sample",
        type=int,
        default=32,
        help="images to decode again and compare when verifying (-1: all; default 32)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_arg(p, "the cache built (folder, size, counts) and the verify report")
    p.set_defaults(func=run)


def print_verify(report: dict) -> None:
    status = "OK" if report["ok"] else "FAILED"
    print(
        f"verify {status}: {report['count']} rows at {report['size']}x{report['size']}, "
        f"{report['failed']} failed files, {report['checked']} re-decoded "
        f"(max difference {report['max_abs_diff']} levels)"
    )
    for w in report["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    for p in report["problems"]:
        print(f"problem: {p}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.data.cache import DEFAULT_MAX_PIXELS, iter_failed_lines, prepare_cache, verify_cache

    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    if args.data_root is None:
        if not args.verify:
            raise UsageError("--data-root is required to build a cache (only --verify works without it)")
        report = verify_cache(args.cache, sample=args.verify_sample, max_pixels=max_pixels)
        if args.json:
            print_json(args, {"cache": args.cache, "verify": report})
        else:
            print_verify(report)
        return 0 if report["ok"] else 1
    if args.size is None:
        raise UsageError("--image-size/--size is required to build a cache")
    cache, report = prepare_cache(
        args.data_root,
        args.size,
        args.cache,
        entry_csv=args.entry_csv,
        all_files=args.all_files,
        workers=args.workers,
        chunk_size=args.chunk_size,
        max_pixels=max_pixels,
        rebuild=args.rebuild,
        verify=args.verify,
        verify_sample=args.verify_sample,
        log=lambda msg: print(msg, file=sys.stderr),
        dataset=args.dataset,
        progress=not args.no_progress,
    )
    if not args.json:
        print(f"cached {len(cache):,} images at {cache.size}x{cache.size} in {cache.cache_dir}")
    if cache.failed:
        print(
            f"warning: {len(cache.failed)} unreadable files skipped (listed under 'failed' in index.json):",
            file=sys.stderr,
        )
        for line in iter_failed_lines(cache.failed):
            print(line, file=sys.stderr)
    if args.json:
        print_json(
            args,
            {
                "cache": cache.cache_dir,
                "size": cache.size,
                "images": len(cache),
                "failed": len(cache.failed),
                "verify": report,
            },
        )
        return 0 if report is None or report["ok"] else 1
    if report is not None:
        print_verify(report)
        return 0 if report["ok"] else 1
    return 0

"""``cianet hash``: the perceptual-hash index of the No Finding images (paper 4.3.2, "Sim" negatives)."""

from __future__ import annotations

import argparse
import sys


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
    p.add_argument("--data-root", required=True, help="folder holding Data_Entry_2017*.csv[.gz] and the images")
    p.add_argument("--out", required=True, help="output index file (.npz)")
    p.add_argument("--cache", default=None, help="image cache folder from `cianet prepare` (read instead of files)")
    p.add_argument("--size", type=int, default=16, help="hash side: codes have SIZE*SIZE entries (default 16)")
    p.add_argument("--entry-csv", default=None, help="entry CSV to use instead of Data_Entry_2017[_v2020].csv")
    p.add_argument("--workers", type=int, default=4, help="threads decoding image files (default 4)")
    p.add_argument("--center", action="store_true", help="subtract each code's mean before normalizing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_hash)


def cmd_hash(args: argparse.Namespace) -> int:
    from cianet.data.nih import NIHIndex
    from cianet.negatives import build_hash_index

    if args.size < 1:
        raise ValueError(f"--size must be positive, got {args.size}")
    if args.workers < 1:
        raise ValueError(f"--workers must be positive, got {args.workers}")
    index = NIHIndex.from_root(args.data_root, entry_csv=args.entry_csv)
    records = [r for r in index.records if r.no_finding]
    if not records:
        raise ValueError(f"{args.data_root}: no No Finding image in {index.entry_csv or 'the entry CSV'}")

    cache = None
    if args.cache:
        from cianet.data.cache import ImageCache

        cache = ImageCache.open(args.cache)
    paths = {r.name: r.path for r in records}
    # Images neither cached nor found on disk are left out (reported below), not an error: the
    # pool is simply smaller.
    usable = [r for r in records if (cache is not None and r.name in cache) or r.path is not None]
    absent = len(records) - len(usable)
    if not usable:
        where = f"in {args.cache} or " if cache is not None else ""
        raise FileNotFoundError(f"{args.data_root}: none of the {len(records)} No Finding images found {where}below it")

    def load(name: str):
        if cache is not None and name in cache:
            return cache.get(name)  # uint8 (S, S)
        from cianet.data.io import load_xray

        return load_xray(paths[name])  # float32 (H, W)

    failed: list[str] = []
    hash_index = build_hash_index(
        [r.name for r in usable],
        [r.patient_id for r in usable],
        load,
        size=args.size,
        center=args.center,
        workers=args.workers,
        progress=False if args.no_progress else None,
        on_error=lambda name, exc: failed.append(f"{name}: {exc}"),
    )
    if len(hash_index) == 0:
        raise ValueError(f"{args.data_root}: no No Finding image could be read (first error: {failed[0]})")
    hash_index.meta.update(
        {"source": "cache" if cache is not None else "files", "cache_size": cache.size if cache is not None else None}
    )
    hash_index.save(args.out)
    n_patients = len(set(hash_index.patients))
    print(
        f"hashed {len(hash_index):,} No Finding images of {n_patients:,} patients "
        f"({args.size}x{args.size} codes) -> {args.out}"
    )
    if absent:
        print(f"skipped {absent:,} No Finding images without a file or cache entry", file=sys.stderr)
    if failed:
        print(f"skipped {len(failed):,} unreadable images, e.g. {failed[0]}", file=sys.stderr)
    return 0

"""Images per second: reading the pre-resized cache vs decoding and resizing the source files.

A script, not a test. Single process throughout. Example::

    python -m cianet.bench.cache_read --images /path/to/nih-chestxray14/images --size 256

It builds a cache of every PNG/JPEG/DICOM file in ``--images`` (in a temporary folder unless ``--cache``
is given), then times, over ``--repeats`` passes of all images:

* decode: ``resize_gray(load_xray(path), size)``  (what a data loader does without the cache)
* cache:  ``ImageCache.get_float(name)``           (float32 [0, 1], the same thing from the memory map)

The cache is read with a warm page cache (the files were just written); numbers for a cold disk depend
on the storage and are not measured here.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cianet.data.cache import ImageCache, build_cache
from cianet.data.io import load_xray, resize_gray

EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm")


def rate(fn: Callable[[], None], count: int, repeats: int) -> tuple[float, float]:
    """(best, median) images per second of ``fn`` processing ``count`` images, over ``repeats`` runs."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(count / (time.perf_counter() - t0))
    return max(rates), statistics.median(rates)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, help="folder of image files")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", default=None, help="cache folder (default: a temporary one)")
    args = ap.parse_args(argv)

    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in EXTENSIONS)
    if not files:
        raise SystemExit(f"{args.images}: no image files")
    pairs = [(p.name, p) for p in files]

    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        cache_dir = Path(args.cache) if args.cache else Path(tmp) / "cache"
        t0 = time.perf_counter()
        cache = build_cache(pairs, args.size, cache_dir, workers=1, progress=False)
        build_s = time.perf_counter() - t0
        names = cache.names

        def decode_all() -> None:
            for p in files:
                resize_gray(load_xray(p), args.size)

        def cache_all() -> None:
            c = ImageCache.open(cache_dir)  # includes opening the memory map
            for n in names:
                c.get_float(n)

        dec_best, dec_med = rate(decode_all, len(files), args.repeats)
        hit_best, hit_med = rate(cache_all, len(names), args.repeats)

    print(f"{len(files)} images from {args.images}, size {args.size}, single process, {args.repeats} passes")
    print(f"build cache (1 worker)   {len(files) / build_s:9.1f} images/s  ({build_s:.2f} s)")
    print(f"decode + resize          {dec_best:9.1f} images/s best, {dec_med:.1f} median")
    print(f"cache get_float          {hit_best:9.1f} images/s best, {hit_med:.1f} median")
    print(f"speed-up                 {hit_med / dec_med:9.1f}x (medians)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

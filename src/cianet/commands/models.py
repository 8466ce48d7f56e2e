"""``cianet canonical``: build the canonical chest (mean No Finding image cropped to the lungs)."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path


def _parse_crop(text: str) -> tuple[int, int, int, int]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"--crop must be four integers x0,y0,x1,y1, got {text!r}")
    return vals  # type: ignore[return-value]


def _write_png(path: Path, img) -> None:
    from PIL import Image

    from cianet.data.io import to_uint8
    from cianet.utils.atomic import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(to_uint8(img), mode="L").save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def cmd_canonical(args: argparse.Namespace) -> int:
    from cianet.data.nih import NIHIndex
    from cianet.models.canonical import (check_crop, crop_and_resize, fallback_crop, mean_of_records,
                                         search_lung_box, select_canonical_records)
    from cianet.utils.atomic import atomic_write_json

    if args.size <= 0:
        raise ValueError(f"--size must be positive, got {args.size}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {out}")
    cache = None
    if args.cache:
        from cianet.data.cache import ImageCache

        cache = ImageCache.open(args.cache)
    index = NIHIndex.from_root(args.data_root, entry_csv=args.entry_csv)
    records = select_canonical_records(index, n=args.n, seed=args.seed, cache=cache)
    res = mean_of_records(records, args.size, cache=cache, progress=None if not args.progress else True)
    if args.crop is not None:
        crop, how = check_crop(args.crop, res.mean.shape), "user"
    else:
        crop, how = search_lung_box(res.mean), "auto"
        if crop is None:
            crop, how = fallback_crop(res.mean.shape), "fallback-central"
            print(f"cianet canonical: warning: lungs not found on the mean image; using the central crop {crop} "
                  "(pass --crop x0,y0,x1,y1 to override)", file=sys.stderr)
    canonical = crop_and_resize(res.mean, crop, args.size)

    mean_path = out.with_name(f"{out.stem}_mean.png")
    json_path = out.with_suffix(".json")
    _write_png(out, canonical)
    _write_png(mean_path, res.mean)
    atomic_write_json(json_path, {
        "canonical": out.name,
        "mean": mean_path.name,
        "crop": list(crop),
        "crop_source": how,
        "crop_frame": f"pixel edges x0,y0,x1,y1 on the {args.size}x{args.size} mean image",
        "size": args.size,
        "n_requested": args.n,
        "n_used": len(res.used),
        "seed": args.seed,
        "source": str(Path(args.data_root).resolve()),
        "entry_csv": str(index.entry_csv) if getattr(index, "entry_csv", None) else args.entry_csv,
        "cache": str(Path(args.cache).resolve()) if args.cache else None,
        "skipped": res.failed,
        "images": res.used,
    })
    print(f"wrote {out} ({args.size}x{args.size}, mean of {len(res.used)} No Finding images, "
          f"crop {crop} [{how}]), {mean_path.name}, {json_path.name}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "canonical", help="build the canonical chest: mean of random No Finding images cropped to the lungs")
    p.add_argument("--data-root", required=True, help="NIH-layout data root (entry CSV + images)")
    p.add_argument("--entry-csv", default=None, help="entry CSV instead of Data_Entry_2017[_v2020].csv")
    p.add_argument("--n", type=int, default=500, help="No Finding images to average (paper: 500)")
    p.add_argument("--size", type=int, default=512, help="side of the mean and canonical images (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random image draw")
    p.add_argument("--out", required=True,
                   help="canonical PNG to write; <stem>_mean.png and <stem>.json are written beside it")
    p.add_argument("--crop", type=_parse_crop, default=None,
                   help="x0,y0,x1,y1 crop on the size x size mean image instead of the automatic lung box")
    p.add_argument("--cache", default=None, help="image cache folder (cianet cache) to read images from")
    p.add_argument("--progress", action="store_true", help="force the progress bar")
    p.set_defaults(func=cmd_canonical)

"""``cianet predict``: findings, boxes and heatmaps for X-ray files with a model bundle."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="predict findings, boxes and heatmaps for X-ray files with a model bundle",
        description=(
            "For every image (PNG/JPEG/DICOM files, folders searched recursively): 14 class probabilities, boxes "
            "of the box classes above their threshold (regions of 8-connected grid cells with p > 0.5, in the "
            "image's pixel frame), a JSON file and an overlay PNG per image, predictions.csv (one row per "
            "image), boxes.csv (one row per box) and summary.json. Unreadable files are reported and skipped. "
            "No DICOM header data is written unless --include-dicom-metadata (a few acquisition tags, never "
            "patient data)."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--model", required=True, help="model bundle (`cianet bundle`)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    p.add_argument("--no-overlay", action="store_true", help="do not draw overlay PNGs")
    p.add_argument("--include-dicom-metadata", action="store_true",
                   help="add Modality, ViewPosition, BodyPartExamined, pixel spacing... of DICOM inputs to the JSON")
    p.add_argument("--connectivity", type=int, choices=(4, 8), default=8, help="cell connectivity of a box region")
    p.add_argument("--mode", choices=("bank", "recompute"), default="bank",
                   help="bank: the negative's stored M- (default); recompute: its stored image through the network")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from cianet.inference.batch import predict_files

    res = predict_files(args.paths, args.model, args.out, batch_size=args.batch_size, device=args.device,
                        overlay=not args.no_overlay, include_dicom_metadata=args.include_dicom_metadata,
                        connectivity=args.connectivity, mode=args.mode,
                        progress=False if args.no_progress else None)
    print(f"predicted {res.predicted} of {res.images} images ({res.boxes} boxes, {len(res.errors)} errors) "
          f"-> {res.out}")
    return 0 if res.predicted else 1

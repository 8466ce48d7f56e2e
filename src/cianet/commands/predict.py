"""``cianet predict``: findings, boxes and heatmaps for X-ray files with a model bundle."""

from __future__ import annotations

import argparse

from cianet.commands.common import add_json_arg, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="predict findings, boxes and heatmaps for X-ray files with a model bundle",
        description=(
            "For every image (PNG/JPEG/DICOM files, folders searched recursively): a probability per class of "
            "the model (14 for ChestX-ray14), boxes of the box classes above their threshold (regions of "
            "8-connected grid cells with p > 0.5, in the "
            "image's pixel frame), a JSON file, heatmaps in the image's frame (.heatmaps.npz) and an overlay PNG "
            "per image, predictions.csv (one row per image), boxes.csv (one row per box), COCO-style coco.json "
            "and coco_results.json, and summary.json; every record names the model and the cianet version. "
            "`cianet view OUT` turns the folder into a web page. Unreadable files are reported and skipped. "
            "No DICOM header data is written unless --include-dicom-metadata (a few acquisition tags, never "
            "patient data)."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--model", required=True, help="model bundle (`cianet bundle`)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto: the GPU when there is one)")
    p.add_argument("--no-overlay", action="store_true", help="do not draw overlay PNGs")
    p.add_argument("--no-heatmaps", action="store_true", help="do not write <stem>.heatmaps.npz files")
    p.add_argument("--include-dicom-metadata", action="store_true",
                   help="add Modality, ViewPosition, BodyPartExamined, pixel spacing... of DICOM inputs to the JSON")
    p.add_argument("--connectivity", type=int, choices=(4, 8), default=8, help="cell connectivity of a box region (default 8)")
    p.add_argument("--mode", choices=("bank", "recompute"), default="bank",
                   help="bank: the negative's stored M- (default); recompute: its stored image through the network")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="auto",
                   help="auto (default): bfloat16 autocast on CPUs with native bfloat16 (AVX512-BF16/AMX-BF16), "
                        "float16 on CUDA, float32 elsewhere; fp32; bf16. Recorded in every JSON output")
    p.add_argument("--prefetch", type=int, default=None, metavar="N",
                   help="images decoded ahead in a background thread while the networks run (default: the batch "
                        "size; 0: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_arg(p, "the summary")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier predict in --out (only the files it wrote are deleted)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when any input could not be predicted")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from cianet.inference.batch import predict_files
    from cianet.utils.outputs import journal_outputs, owned_output

    with owned_output(args.out, "predict", overwrite=args.overwrite) as out:  # one writer; never mixes two runs
        res = predict_files(args.paths, args.model, args.out, batch_size=args.batch_size, device=args.device,
                            overlay=not args.no_overlay, heatmaps=not args.no_heatmaps,
                            include_dicom_metadata=args.include_dicom_metadata,
                            connectivity=args.connectivity, mode=args.mode, precision=args.precision,
                            prefetch=args.prefetch, record=lambda names: journal_outputs(out, names),
                            progress=False if args.no_progress else None)
    if args.json:
        print_json(args, {"out": str(res.out), "images": res.images, "predicted": res.predicted, "boxes": res.boxes,
                          "errors": res.errors})
    else:
        print(f"predicted {res.predicted} of {res.images} images ({res.boxes} boxes, {len(res.errors)} errors) "
              f"-> {res.out}")
    return 0 if res.predicted and not (args.strict and res.errors) else 1

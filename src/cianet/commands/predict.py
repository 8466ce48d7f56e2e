"""``cianet predict``: findings, boxes and heatmaps for X-ray files with a model bundle."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from cianet.commands.common import add_json_arg, print_json
from cianet.errors import InputError, MissingPathError, UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict findings, boxes and heatmaps for X-ray files with a model bundle",
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
    _input_args(p)
    _output_args(p)
    _box_args(p)
    _negative_args(p)
    _speed_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_arg(p, "the summary")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of an earlier predict in --out (only the files it wrote are deleted)",
    )
    p.add_argument("--strict", action="store_true", help="exit with status 1 when any input could not be predicted")
    p.set_defaults(func=cmd_predict)


def _input_args(p: argparse.ArgumentParser) -> None:
    """The images, the model, the output folder and where the model runs."""
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--model", required=True, help="model bundle (`cianet bundle`)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto: the GPU when there is one)"
    )


def _output_args(p: argparse.ArgumentParser) -> None:
    """Which optional files and fields are written."""
    p.add_argument("--no-overlay", action="store_true", help="do not draw overlay PNGs")
    p.add_argument("--no-heatmaps", action="store_true", help="do not write <stem>.heatmaps.npz files")
    p.add_argument(
        "--include-dicom-metadata",
        action="store_true",
        help="add Modality, ViewPosition, BodyPartExamined, pixel spacing... of DICOM inputs to the JSON",
    )


def _box_args(p: argparse.ArgumentParser) -> None:
    """How heatmap cells become boxes."""
    p.add_argument(
        "--connectivity", type=int, choices=(4, 8), default=8, help="cell connectivity of a box region (default 8)"
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="P",
        help="report a box class's regions when its image probability reaches P, for every class "
        "(default: the bundle's per-class thresholds, `cianet bundle info`; 0.5 unless set)",
    )


def _negative_args(p: argparse.ArgumentParser) -> None:
    """What each image is contrasted with: a prior, a table of priors, or the bundle's bank."""
    priors = p.add_mutually_exclusive_group()
    priors.add_argument(
        "--prior",
        metavar="FILE",
        help="the patient's earlier No Finding study, contrasted with the one image given instead of "
        "the bundle's bank (a model trained with --negatives prior); the record names it as "
        "its negative",
    )
    priors.add_argument(
        "--priors",
        metavar="CSV",
        help="a CSV with the header image,prior and one row per image (paths relative to the CSV's "
        "folder): each image is contrasted with its prior; images not in it use the bank",
    )
    p.add_argument(
        "--mode",
        choices=("bank", "recompute"),
        default="bank",
        help="bank: the negative's stored M- (default); recompute: its stored image through the network",
    )


def _speed_args(p: argparse.ArgumentParser) -> None:
    """How the networks run: numeric precision and images decoded ahead."""
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        default="auto",
        help="auto (default): bfloat16 autocast on CPUs with native bfloat16 (AVX512-BF16/AMX-BF16), "
        "float16 on CUDA, float32 elsewhere; fp32; bf16. Recorded in every JSON output",
    )
    p.add_argument(
        "--prefetch",
        type=int,
        default=None,
        metavar="N",
        help="images decoded ahead in a background thread while the networks run (default: the batch size; 0: none)",
    )
    p.add_argument(
        "--writers",
        type=int,
        default=None,
        metavar="N",
        help="threads that write a batch's overlays, heatmaps and JSON side by side (default: half the cores, at "
        "most the batch size; on a GPU the writing, not the networks, sets the pace)",
    )


def cmd_predict(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.inference.batch import check_threshold, predict_files, read_prior_table
    from cianet.utils.output_folders import journal_outputs, owned_output

    check_threshold(args.threshold)  # exit 2 before anything is claimed or written
    priors = None
    if args.prior is not None:
        if len(args.paths) != 1 or not Path(args.paths[0]).is_file():
            raise UsageError("--prior goes with exactly one image file; for several images use --priors CSV")
        priors = {args.paths[0]: args.prior}
        check_prior(args.prior, args.paths[0])  # exit 2 before anything is claimed or written
    elif args.priors is not None:
        priors = read_prior_table(args.priors)

    check_before_claiming(args)
    with owned_output(args.out, "predict", overwrite=args.overwrite) as out:  # one writer; never mixes two runs
        res = predict_files(
            args.paths,
            args.model,
            args.out,
            batch_size=args.batch_size,
            device=args.device,
            overlay=not args.no_overlay,
            heatmaps=not args.no_heatmaps,
            include_dicom_metadata=args.include_dicom_metadata,
            connectivity=args.connectivity,
            mode=args.mode,
            precision=args.precision,
            prefetch=args.prefetch,
            writers=args.writers,
            record=lambda names: journal_outputs(out, names),
            priors=priors,
            threshold=args.threshold,
            progress=False if args.no_progress else None,
        )
    if args.json:
        print_json(
            args,
            {
                "out": str(res.out),
                "images": res.images,
                "predicted": res.predicted,
                "boxes": res.boxes,
                "errors": res.errors,
                "negatives": negatives_used(res.out),
            },
        )
    else:
        print(
            f"predicted {res.predicted} of {res.images} images ({res.boxes} boxes, {len(res.errors)} errors) "
            f"-> {res.out}"
        )
    return 0 if res.predicted and not (args.strict and res.errors) else 1


def check_before_claiming(args: argparse.Namespace) -> None:
    """The errors a user can make in the flags, found before --out is claimed: a refused command leaves no
    folder behind. The bundle's header is checked too (cheap: no tensors read)."""
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.inference.batch import PredictSettings
    from cianet.run.bundle_format import is_safetensors, read_header

    settings = PredictSettings(batch_size=args.batch_size, prefetch=args.prefetch, writers=args.writers)
    settings.lookahead()  # the checks predict_files makes, with the same messages
    settings.writer_threads()
    model = Path(args.model)
    if not model.is_file():
        raise MissingPathError(f"--model {model}: no such bundle file (make one with `cianet bundle`)")
    if is_safetensors(model):
        read_header(model)


def check_prior(prior: str, image: str) -> None:
    """``--prior``: an existing, readable image file that is not the image itself; else an error naming it."""
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.data.io import XrayReadError, load_xray

    if not Path(prior).is_file():
        raise MissingPathError(
            f"--prior {prior} does not exist" if not Path(prior).exists() else f"--prior {prior} is not a file"
        )
    if Path(prior).resolve() == Path(image).resolve():
        raise UsageError(f"--prior {prior} is the image itself: an image is never its own negative")
    try:
        load_xray(prior)
    except (XrayReadError, OSError) as exc:
        raise InputError(f"--prior {prior} cannot be read: {exc}") from None


def negatives_used(out) -> list[dict[str, str]]:
    """Per predicted image, the negative it was contrasted with and where it came from (prior, bank,
    canonical), from the run's predictions.csv."""
    path = Path(out) / "predictions.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {"file": r["file"], "negative": r.get("negative", ""), "negative_source": r.get("negative_source", "")}
            for r in csv.DictReader(fh)
            if r.get("status") == "ok"
        ]

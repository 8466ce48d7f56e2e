"""``cianet synth``: write the synthetic chest X-ray data set (NIH layout or another one, known ground truth)."""

from __future__ import annotations

import argparse
import json

from cianet.commands.common import add_json_arg, print_json
from cianet.config import DATASETS, NIH


def _share(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic chest X-ray data set with ground truth (NIH layout, or --layout rsna|vindr|csv)",
        description=(
            "Write a synthetic chest X-ray data set in the NIH ChestX-ray14 layout (images/, "
            "Data_Entry_2017.csv, BBox_List_2017.csv, train_val_list.txt, test_list.txt) plus "
            "synth_truth.csv with every box and the parameters that undo each image's deformation; --layout "
            "rsna|vindr|csv writes it in that data set's layout instead, with synth_layout.json."
        ),
    )
    _dataset_args(p)
    _share_args(p)
    _patient_args(p)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    _negative_args(p)
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--progress", action="store_true", help="show a progress bar even when not on a terminal")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_arg(p, "the data set's summary on one line (without --json: indented)")
    p.set_defaults(func=run)


def _dataset_args(p: argparse.ArgumentParser) -> None:
    """Where, in which layout, how many images of what size, from which seed."""
    p.add_argument("out", help="output folder (must be empty unless --overwrite)")
    p.add_argument(
        "--layout",
        choices=DATASETS,
        default=NIH,
        help="write the phantom in this data set's layout (rsna, vindr: DICOM images; README, Data sets); default nih",
    )
    p.add_argument("--n-images", type=int, default=2000, help="number of images (default 2000)")
    p.add_argument(
        "--image-size", "--size", dest="size", type=int, default=256, help="image side in pixels (default 256)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")


def _share_args(p: argparse.ArgumentParser) -> None:
    """The shares of deformed, annotated and No Finding images."""
    p.add_argument(
        "--deform-share",
        type=_share,
        default=0.5,
        help="share of images with a random affine deformation (default 0.5)",
    )
    p.add_argument(
        "--strong-share", type=_share, default=0.3, help="share of the deformed images deformed strongly (default 0.3)"
    )
    p.add_argument(
        "--annotated-share",
        type=_share,
        default=0.3,
        help="share of the positive images with box-class findings whose boxes go into "
        "BBox_List_2017.csv (default 0.3)",
    )
    p.add_argument("--no-finding-share", type=_share, default=0.5, help="share of No Finding images (default 0.5)")


def _patient_args(p: argparse.ArgumentParser) -> None:
    """How many studies each patient gets, and whose radiographs they are drawn into."""
    p.add_argument(
        "--images-per-patient",
        type=int,
        nargs=2,
        default=(1, 4),
        metavar=("MIN", "MAX"),
        help="images per patient, drawn uniformly (default 1 4)",
    )
    p.add_argument(
        "--backgrounds",
        metavar="DIR",
        default=None,
        help="draw findings into real No Finding X-rays from DIR (DIR/images when present; "
        "an NIH Data_Entry CSV in DIR selects the No Finding ones) instead of the phantom anatomy. "
        "Each radiograph is one patient, never shared (its follow-ups are re-acquisitions of it: "
        "position, breath, exposure, noise), so N radiographs yield at most N patients, about "
        "N x (MIN + MAX) / 2 images (2.5 N with the default 1 4); too few is an error",
    )


def _negative_args(p: argparse.ArgumentParser) -> None:
    """The negatives beside the data set: twins, pool-only images, and where the priors fall."""
    p.add_argument(
        "--twins",
        action="store_true",
        help="also write for every image, No Finding included, a finding-free re-render of the same "
        "patient under an independent acquisition (own pose change, breath, exposure, noise) to "
        "OUT/twins: the negatives of the oracle, an upper bound (nih layout only)",
    )
    p.add_argument(
        "--extra-negatives",
        type=int,
        default=0,
        metavar="N",
        help="add N No Finding images of N new patients that serve only as negatives (the hash pool), "
        "listed in OUT/pool_only.txt; runs never train, validate or test on them, and the other "
        "images are those written without this flag (nih layout only; default 0)",
    )
    p.add_argument(
        "--prior-share",
        type=_share,
        default=None,
        metavar="F",
        help="arrange each patient's studies so that the share F of the patients with a finding has a "
        "No Finding first study (a prior for every finding) and the others none before their "
        "findings (cianet.data.priors). Default: as drawn, about half of them with the default "
        "shares; an F the patients cannot reach (single-study patients) is an error",
    )


def run(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.phantom import write_layout

    summary = write_layout(
        args.out,
        args.layout,
        n_images=args.n_images,
        size=args.size,
        seed=args.seed,
        deform_share=args.deform_share,
        strong_share=args.strong_share,
        annotated_share=args.annotated_share,
        backgrounds=args.backgrounds,
        images_per_patient=tuple(args.images_per_patient),
        progress=not args.no_progress,
        force_progress=args.progress,
        workers=args.workers,
        no_finding_share=args.no_finding_share,
        overwrite=args.overwrite,
        twins=args.twins,
        extra_negatives=args.extra_negatives,
        prior_share=args.prior_share,
    )
    if args.json:
        print_json(args, summary)
    else:
        print(json.dumps(summary, indent=2))
    return 0

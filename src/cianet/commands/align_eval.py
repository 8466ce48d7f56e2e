"""``cianet align-eval``: measure how well an alignment checkpoint aligns (docs/method.md, "Measuring alignment")."""

from __future__ import annotations

import argparse

from cianet.commands.common import add_dataset_flag, add_json_arg, print_json


def register(sub) -> None:
    p = sub.add_parser(
        "align-eval",
        help="measure an alignment network: residual under known random warps (any data), against "
        "the phantom's true deformations, and the share of parameters at a bound",
        description="Measure an alignment network (align.pt) on --n images of a data root: (1) warp each image by "
        "a known random warp and report how much of it the network undoes (residual in pixels, any "
        "data set); (2) on a `cianet synth` phantom, the residual to its recorded true deformations; "
        "(3) the share of predicted parameters pressed against their bounds. Writes nothing unless "
        "--out.",
    )
    p.add_argument("--align", required=True, help="align.pt (or the folder holding it)")
    p.add_argument(
        "--data-root",
        required=True,
        help="data folder, layout: --dataset (a phantom's synth_truth.csv is used when present)",
    )
    p.add_argument("--entry-csv", default=None, help="entry CSV instead of Data_Entry_2017[_v2020].csv")
    add_dataset_flag(p, default="auto")
    p.add_argument("--cache", default=None, help="image cache folder (`cianet prepare`) to read images from")
    p.add_argument("--n", type=int, default=400, help="images measured, drawn with --seed (default 400)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image draw and of the random warps (default 0)")
    p.add_argument(
        "--image-size",
        "--size",
        dest="size",
        type=int,
        default=None,
        help="side the images are read at (default: the cache's, else the alignment's training size)",
    )
    p.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto: the GPU when there is one)"
    )
    add_json_arg(p, "the report (without the image names)")
    p.add_argument("--out", default=None, help="write the JSON report (image names included) to this file")
    p.set_defaults(func=cmd_align_eval)


def cmd_align_eval(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.evaluation.alignment import evaluate_alignment, format_alignment_report

    rep = evaluate_alignment(
        args.align,
        args.data_root,
        cache=args.cache,
        n=args.n,
        seed=args.seed,
        size=args.size,
        entry_csv=args.entry_csv,
        device=args.device,
        out=args.out,
        dataset=args.dataset,
    )
    if args.json:
        print_json(args, {k: v for k, v in rep.items() if k != "names"})
    else:
        print(format_alignment_report(rep))
        if args.out:
            print(f"wrote {args.out}")
    return 0

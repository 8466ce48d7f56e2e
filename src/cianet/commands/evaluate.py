"""``cianet evaluate``: evaluate a run as the paper does (localization accuracy, AUC)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from cianet.commands.common import add_dataset_args, add_json_arg, print_json
from cianet.errors import MissingPathError, UsageError


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a run as the paper does (localization accuracy, AUC)",
        description="Score a run on its own test split: metrics.json/md with bootstrap confidence "
        "intervals, predictions.npz, and ROC, PR, localization-vs-T(IoU) and training "
        "loss plots (PNG). `cianet view RUN` shows them in a web page. With --out: score "
        "it on another data set (--data-root, --dataset, --label-map nih) instead, on "
        "the classes both have, writing into --out (README, Cross-data-set evaluation).",
    )
    p.add_argument("--run", required=True, help="run folder of `cianet train`")
    p.add_argument(
        "--data-root", help="override the data root saved in the run (with --out: the data set to score the run on)"
    )
    p.add_argument(
        "--out",
        help="cross-data-set evaluation: score the run on every image of --data-root (not its "
        "own split) and write metrics, predictions and plots here, not into the run",
    )
    add_dataset_args(p)
    p.add_argument("--entry-csv", default=None, help="with --out: the data set's image table, if not the standard name")
    p.add_argument("--bbox-csv", default=None, help="with --out: the data set's box table, if not the standard name")
    p.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto: the GPU when there is one)"
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default=None,
        help="bf16: bfloat16 autocast; auto: bf16 on CPUs with native bfloat16 (default: the run's "
        "run.precision, float32 on CPU unless trained otherwise)",
    )
    add_json_arg(p, "the metrics")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the confidence intervals of AUC and localization (default 1000; 0: none)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)


#: what `cianet evaluate` writes into its folder (the run's, or --out): claimed in the folder's manifest
EVALUATE_FILES = (
    "metrics.json",
    "metrics.md",
    "predictions.npz",
    "roc.png",
    "pr.png",
    "localization.png",
    "loss.png",
    "negatives.csv",
    "negatives.json",
)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    metrics = _evaluate_elsewhere(args) if args.out else _evaluate_own_split(args)
    if args.json:
        keys = (
            "localization",
            "auc",
            "pointing_game",
            "val_threshold",
            "n_images",
            "n_boxes",
            "precision",
            "ci",
            "plots",
            "cross_dataset",
        )
        print_json(args, {k: metrics[k] for k in keys if k in metrics})
    else:
        run = Path(args.out or args.run)
        print(((run.parent if run.is_file() else run) / "metrics.md").read_text())  # --run R/checkpoint.pt too
    return 0


def _evaluate_elsewhere(args: argparse.Namespace) -> dict:
    """Score the run on every image of another data set (--data-root), writing into --out."""
    if not args.data_root:
        raise UsageError("--out scores the run on another data set: give that data set's --data-root")
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.evaluation.cross_dataset import evaluate_on_dataset
    from cianet.utils.output_folders import check_claimable, claim_output, record_outputs, writing_into

    # a folder of its own: new, empty or an earlier cross-data-set evaluation's, never a user's files (the run
    # folder itself is refused by evaluate_on_dataset, naming it); a new one is made only once the data passed
    out = Path(args.out)
    run_dir = Path(args.run).parent if Path(args.run).is_file() else Path(args.run)
    if not (out.exists() and run_dir.exists() and out.resolve() == run_dir.resolve()):
        check_claimable(out, "evaluate", adopt=EVALUATE_FILES, adopt_if=("metrics.json",))
    existing = out.is_dir()
    with writing_into(out, "cianet evaluate") if existing else contextlib.nullcontext():
        metrics = evaluate_on_dataset(
            args.run,
            args.data_root,
            args.out,
            dataset=args.dataset or "auto",
            label_map=args.label_map,
            box_merge=args.box_merge,
            merge_iou=args.merge_iou,
            entry_csv=args.entry_csv,
            bbox_csv=args.bbox_csv,
            device=args.device,
            progress=not args.no_progress,
            n_boot=args.bootstrap,
            precision=args.precision,
        )
    claim_output(out, "evaluate", adopt=("*",))  # checked above: new, empty or an earlier evaluate's
    record_outputs(out, [name for name in EVALUATE_FILES if (out / name).is_file()])
    return metrics


def _evaluate_own_split(args: argparse.Namespace) -> dict:
    """Score the run on its own test split, writing into the run folder."""
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.evaluation.evaluate import evaluate_run
    from cianet.utils.output_folders import writing_into

    given = [
        f
        for f, v in (
            ("--label-map", args.label_map),
            ("--box-merge", args.box_merge),
            ("--merge-iou", args.merge_iou),
            ("--entry-csv", args.entry_csv),
            ("--bbox-csv", args.bbox_csv),
        )
        if v is not None
    ]
    if given:  # the run's own split is scored on the data and classes it trained with
        raise UsageError(f"{', '.join(given)} only apply to a cross-data-set evaluation: add --out DIR")
    run = Path(args.run)
    if not run.exists():
        raise MissingPathError(f"--run {run}: no such run folder")
    with writing_into(run.parent if run.is_file() else run, "cianet evaluate", EVALUATE_FILES):
        metrics = evaluate_run(
            args.run,
            device=args.device,
            progress=not args.no_progress,
            data_root=args.data_root,
            n_boot=args.bootstrap,
            precision=args.precision,
            dataset=args.dataset,
        )
    return metrics

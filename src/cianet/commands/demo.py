"""``cianet demo``: the whole pipeline on the synthetic phantom, on a CPU, with a report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cianet.commands.common import add_json_arg, print_json, run_result


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on the synthetic phantom, on a CPU, with a report",
        description="Run every stage on a synthetic phantom (cianet synth, prepare, canonical, train-align, hash, "
        "train the baseline and CIA-Net, evaluate both), then write report.md (the Table 1 comparison "
        "with intervals and figures) and site/index.html (the viewer, `cianet view`). An interrupted "
        "demo resumes where it stopped. The models it trains know only the phantom: their bundles "
        "warn on real X-rays.",
    )
    p.add_argument("--out", default="cianet-demo", help="output folder (default cianet-demo)")
    p.add_argument(
        "--fast", action="store_true", help="a smoke run: 240 images, 1 epoch (checks the pipeline, not the method)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the phantom and of every stage (default 0)")
    p.add_argument("--n-images", type=int, help="phantom size (default: 900, --fast: 240)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming what exists in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_json_arg(p, "the report's path, each run's test metrics and the stages' timings")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.experiments.demo import run_demo

    report = run_demo(
        args.out,
        fast=args.fast,
        seed=args.seed,
        n_images=args.n_images,
        resume=not args.fresh,
        progress=not args.no_progress,
    )
    if args.json:
        out = Path(args.out)  # the demo's layout: runs/baseline, runs/cianet, timings.json (cianet.experiments.demo)
        print_json(
            args,
            {
                "out": out,
                "report": report,
                "runs": {kind: run_result(out / "runs" / kind) for kind in ("baseline", "cianet")},
                "timings": json.loads((out / "timings.json").read_text()),
            },
        )
        return 0
    print(f"report: {report}")
    return 0

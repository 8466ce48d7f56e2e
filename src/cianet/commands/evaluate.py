"""``cianet evaluate``: evaluate a run as the paper does (localization accuracy, AUC)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run as the paper does (localization accuracy, AUC)")
    p.add_argument("--run", required=True, help="run folder of `cianet train`")
    p.add_argument("--data-root", help="override the data root saved in the run")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print metrics as one JSON object")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cianet.evaluation.evaluate import evaluate_run
    from cianet.run.scoring import json_safe

    metrics = evaluate_run(args.run, device=args.device, progress=not args.no_progress, data_root=args.data_root)
    if args.json:
        print(json.dumps(json_safe({k: metrics[k] for k in ("localization", "auc", "n_images", "n_boxes")})))
    else:
        print((Path(args.run) / "metrics.md").read_text())
    return 0

"""``cianet export-onnx``: export a bundle's network (image + M- -> logits) to ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path

from cianet.commands.common import add_json_arg, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="export a bundle's network (image + M- -> logits) to ONNX",
        description=(
            "Export (aligned gray image (B,1,S,S), negative map m_neg (B,h,w)) -> (logits, test_logits, delta) "
            "with a dynamic batch axis, plus OUT.negatives.npz (the bank) and OUT.align.onnx (the alignment "
            "network, when the bundle has one)."
        ),
    )
    p.add_argument("--model", required=True, help="model bundle (`cianet bundle`)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17, default 18)")
    p.add_argument("--static-batch", action="store_true", help="fixed batch size 2 instead of a dynamic axis")
    p.add_argument("--no-alignment", action="store_true", help="do not export the alignment network")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out when it exists (only that file and its .align.onnx and .negatives.npz siblings; "
        "without it an existing file is refused)",
    )
    add_json_arg(p, "the files written and the exporter used")
    p.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    # lazy: the library loads when the command runs, not when cianet builds its parser
    from cianet.inference.onnx_export import export_onnx
    from cianet.utils.output_folders import refuse_replace

    out = Path(args.out)
    for path in (out, out.with_name(out.stem + ".align.onnx"), out.with_name(out.stem + ".negatives.npz")):
        refuse_replace(path, args.overwrite)

    res = export_onnx(
        args.model, args.out, opset=args.opset, dynamic_batch=not args.static_batch, alignment=not args.no_alignment
    )
    if args.json:
        print_json(args, {**res, "opset": args.opset, "dynamic_batch": not args.static_batch})
        return 0
    extra = [str(p) for p in (res["negatives"], res["alignment"]) if p]
    print(f"wrote {res['model']} ({res['exporter']} exporter)" + (f" and {', '.join(extra)}" if extra else ""))
    return 0

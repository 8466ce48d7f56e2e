"""Examples shown at the end of every command's ``--help`` (``cianet.cli`` adds them), and the help formatter
that shows every default.

Each example is a line a user can paste (paths are placeholders; ``cianet-demo/`` is what ``cianet demo`` writes).
"""

from __future__ import annotations

import argparse

EXAMPLES: dict[str, tuple[str, ...]] = {
    "synth": (
        "cianet synth phantom --n-images 900 --image-size 128",
        "cianet synth semi --backgrounds NIH/images --n-images 300   # phantom findings on real chests",
    ),
    "index": ("cianet index --data-root NIH", "cianet index --data-root VINDR --dataset vindr --json"),
    "splits": (
        "cianet splits --data-root NIH --out splits.json",
        "cianet splits --data-root NIH --out splits.json --official --only-present",
    ),
    "prepare": (
        "cianet prepare --data-root NIH --cache cache512 --image-size 512",
        "cianet prepare --cache cache512 --verify",
    ),
    "canonical": ("cianet canonical --data-root NIH --cache cache512 --image-size 512 --out canonical.png",),
    "hash": (
        "cianet hash --data-root NIH --cache cache512 --out hash.npz",
        "cianet hash --data-root NIH --out hash.npz --align runs/align/align.pt --image-size 512",
    ),
    "train-align": ("cianet train-align --data-root NIH --cache cache512 --canonical canonical.png --out runs/align",),
    "align-eval": ("cianet align-eval --align runs/align/align.pt --data-root NIH --cache cache512",),
    "train": (
        "cianet train --config tiny --data-root cianet-demo/data --out runs/tiny",
        "cianet train --data-root NIH --cache cache512 --align runs/align --out runs/cianet --fold 0 "
        "--annotated-ratio 0.8",
        "cianet train --resume --out runs/cianet",
    ),
    "evaluate": (
        "cianet evaluate --run cianet-demo/runs/cianet",
        "cianet evaluate --run runs/cianet --data-root VINDR --dataset vindr --label-map nih --out eval-vindr",
    ),
    "experiment": (
        "cianet experiment table1 --data-root NIH --cache cache512 --folds 0,1 --seeds 0",
        "cianet experiment evidence --config tiny --out runs/evidence",
    ),
    "demo": (
        "cianet demo                      # about 3-12 min on a 2-core CPU; writes cianet-demo/",
        "cianet demo --fast --out demo-fast   # a few minutes, tiny numbers",
        "cianet demo 2> demo.log          # no progress bars in a redirected stderr (--progress forces them)",
    ),
    "bundle": (
        "cianet bundle --run cianet-demo/runs/cianet --out cianet-demo/cianet.cianet",
        "cianet bundle info cianet-demo/cianet.cianet",
    ),
    "predict": (
        "cianet predict cianet-demo/data/images --model cianet-demo/cianet.cianet --out pred",
        "cianet predict scan.dcm --model model.cianet --out pred --threshold 0.7 --json",
    ),
    "view": (
        "cianet view cianet-demo/runs/cianet cianet-demo/runs/baseline --out site",
        "cianet view pred --data-root NIH   # ground truth from the data root, matched by file name",
    ),
    "export-onnx": ("cianet export-onnx --model cianet-demo/cianet.cianet --out cianet.onnx",),
    "bench": ("cianet bench --quick", "cianet bench --only train,predict --json --out bench.json"),
}


def examples_epilog(command: str, epilog: str | None) -> str | None:
    """The ``--help`` epilog of ``command``: its examples, then what it had."""
    lines = EXAMPLES.get(command)
    if not lines:
        return epilog
    text = "examples:\n" + "\n".join(f"  {line}" for line in lines)
    return text + ("\n\n" + epilog if epilog else "")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter that keeps the examples' lines as written and shows the default of every option
    whose help does not already say it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        if isinstance(action.default, (list, tuple)) and not action.default:
            return text
        return text + " (default: %(default)s)"

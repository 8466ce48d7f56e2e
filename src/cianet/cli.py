"""The ``cianet`` command line: one sub-command per task, registered by the modules in cianet.commands.

Each command module exposes ``register(subparsers)``, adding its parsers with ``set_defaults(func=...)``;
``func(args) -> int`` does the work. Command modules import torch and friends inside ``func`` so that
``cianet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cianet import __version__

# Order here is the order in `cianet --help`.
COMMAND_MODULES = (
    "cianet.commands.synth",
    "cianet.commands.data",
    "cianet.commands.cache",
    "cianet.commands.models",
    "cianet.commands.negatives",
    "cianet.commands.train",
    "cianet.commands.predict",
    "cianet.commands.bench",
)


class CLIError(Exception):
    """An error to show the user as one line (no traceback), exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cianet",
        description="CIA-Net for chest X-ray diagnosis and localization (Liu et al., ICCV 2019).",
    )
    parser.add_argument("--version", action="version", version=f"cianet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command module not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("cianet: interrupted (finished work is kept; rerun the same command to resume)", file=sys.stderr)
        return 130
    except CLIError as exc:
        print(f"cianet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        # Errors raised for bad input carry a message that names the file and the problem.
        print(f"cianet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``cianet`` command line: one sub-command per task, registered by the modules in cianet.commands.

Each command module exposes ``register(subparsers)``, adding its parsers with ``set_defaults(func=...)``;
``func(args) -> int`` parses nothing more, calls the library and prints. Command modules import torch and
friends inside ``func`` so that ``cianet --help`` stays fast.

Errors never end in a traceback unless ``--debug`` is given: a deliberate error (:class:`cianet.errors.CianetError`,
and ``ValueError``/``OSError`` raised for bad input) is one line on stderr and exit status 2 (its class may
say otherwise); anything else is reported as a bug, exit status 3. The exit codes are listed in
:mod:`cianet.errors`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from typing import Iterator

from cianet import __version__
from cianet.errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, CianetError

# Order here is the order in `cianet --help`.
COMMAND_MODULES = (
    "cianet.commands.synth",
    "cianet.commands.index",
    "cianet.commands.splits",
    "cianet.commands.prepare",
    "cianet.commands.canonical",
    "cianet.commands.hash",
    "cianet.commands.train_align",
    "cianet.commands.align_eval",
    "cianet.commands.train",
    "cianet.commands.evaluate",
    "cianet.commands.experiment",
    "cianet.commands.demo",
    "cianet.commands.bundle",
    "cianet.commands.predict",
    "cianet.commands.view",
    "cianet.commands.export_onnx",
    "cianet.commands.bench",
)

EPILOG = ("exit status: 0 success; 1 some inputs failed; 2 usage or input error; 3 internal error (a bug: "
          "rerun with --debug for the traceback); 130 interrupted")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cianet",
        description="CIA-Net for chest X-ray diagnosis and localization (Liu et al., ICCV 2019).",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"cianet {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the full traceback of any error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages are joined with "; ")."""
    parts = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(parts) or type(exc).__name__


def _one_line_warnings(prefix: str) -> None:
    """Print cianet's own warnings (bad-looking images, ...) as ``cianet CMD: warning: MESSAGE``, once each."""
    import warnings

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__name__ == "XrayWarning":  # by name: importing cianet.data.io here would slow --help
            print(f"{prefix}: warning: {one_line(message)}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show  # the default filter shows each distinct message (each names its file) once


@contextlib.contextmanager
def result_stdout(args: argparse.Namespace) -> Iterator[None]:
    """Run a command so that, with ``--json``, stdout carries its one JSON object alone.

    Whatever the work prints on stdout meanwhile (a library's message, an exporter's chatter) goes to stderr;
    ``cianet.commands.common.print_json`` writes to the stdout saved here as ``args.result_stream``.
    """
    args.result_stream = sys.stdout
    if getattr(args, "json", False):
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        yield


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):  # no command: a usage error
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    prefix = f"cianet {args.command}"
    _one_line_warnings(prefix)
    try:
        with result_stdout(args):  # --json: stdout holds the one JSON object, nothing else
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted (finished work is kept; rerun the same command to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CianetError, ValueError, OSError) as exc:
        # Raised for bad input, with a message that names the file or flag and the problem.
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"{prefix}: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, CianetError) else EXIT_INPUT
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback without --debug
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"{prefix}: internal error (a bug in cianet, please report it): {type(exc).__name__}: "
              f"{one_line(exc)}" + ("" if args.debug else "; rerun with --debug for the traceback"), file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())

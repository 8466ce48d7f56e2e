"""The ``cianet`` command line: one sub-command per task, registered by the modules in cianet.commands.

Each command module exposes ``register(subparsers)``, adding its parsers with ``set_defaults(func=...)``;
``func(args) -> int`` parses nothing more, calls the library and prints. Command modules import torch and
friends inside ``func`` so that ``cianet --help`` stays fast.

Errors never end in a traceback unless ``--debug`` is given: a deliberate error (:class:`cianet.errors.CianetError`)
or a file-system error (``OSError``: permission denied, disk full, naming the file) is one line on stderr and
exit status 2 (a CianetError's class may say otherwise); anything else, a plain ``ValueError`` included, is
reported as a bug, exit status 3, with its traceback written to a log file (:func:`error_log_dir`) and a
pointer to ``--debug``. The exit codes are listed in :mod:`cianet.errors`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib
import os
import platform
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from cianet import __version__
from cianet.errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, CianetError

# One module per command, named after it (train-align: cianet.commands.train_align). Order here is the order in
# `cianet --help`.
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

EPILOG = (
    "exit status: 0 success; 1 some inputs failed; 2 usage or input error; 3 internal error (a bug: "
    "rerun with --debug for the traceback); 130 interrupted"
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``command`` (a command's name, e.g. ``train-align``) the top level and that
    command alone: one command's module imported and its flags built, not seventeen (a few ms per run; many in
    the test suite). A command line parses to the same result either way."""
    parser = argparse.ArgumentParser(
        prog="cianet",
        description="CIA-Net for chest X-ray diagnosis and localization (Liu et al., ICCV 2019).",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"cianet {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the full traceback of any error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        if command is None or module == command_module(command):
            importlib.import_module(module).register(sub)
    examples = importlib.import_module("cianet.commands.examples")  # loaded as the command modules are
    for name, command_parser in sub.choices.items():
        progress_flags(command_parser)
        command_parser.formatter_class = examples.HelpFormatter  # every default shown; the examples as written
        command_parser.epilog = examples.examples_epilog(name, command_parser.epilog)
    return parser


def progress_flags(command: argparse.ArgumentParser) -> None:
    """``--progress`` beside every ``--no-progress``: one meaning on every command (cianet.utils.progress)."""
    flags = {s for a in command._actions for s in a.option_strings}
    if "--no-progress" in flags and "--progress" not in flags:
        command.add_argument(
            "--progress",
            action="store_true",
            help="show progress bars even when stderr is not a terminal (default: only on a "
            "terminal, or as the environment variable CIANET_PROGRESS=1/0 says)",
        )


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (multi-line messages are joined with "; ")."""
    parts = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(parts) or type(exc).__name__


def _one_line_warnings(prefix: str) -> None:
    """Print every warning (cianet's own, and those of pydicom, torch, numpy ... it drives) as one line,
    ``cianet CMD: warning: MESSAGE``, once per distinct message: no source lines, no install paths."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = one_line(message)
        origin = _origin(str(filename))
        if origin not in ("cianet", "") and category.__name__ != "XrayWarning":
            text = f"{text} ({origin} {category.__name__})"
        if text not in seen:
            seen.add(text)
            print(f"{prefix}: warning: {text}", file=sys.stderr)

    warnings.showwarning = show


def _origin(filename: str) -> str:
    """The package a warning came from (``torch``, ``pydicom``, ``cianet``), read off its file's path."""
    parts = filename.replace("\\", "/").split("/")
    for marker in ("site-packages", "dist-packages", "src"):
        if marker in parts[:-1]:
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return "cianet" if "cianet" in parts else ""


#: what to tell a user whose command was interrupted: only where rerunning really continues the work
RESUME_ADVICE = {
    "prepare": "rerun the same command to resume",
    "experiment": "rerun the same command to resume",
    "train": "add --resume to the same command to continue from the last checkpoint",
    "train-align": "add --resume to the same command to continue from the last checkpoint",
    "predict": "predict does not resume: rerun with --overwrite to start again, or choose another --out",
}


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler ending a job) unwinds like Ctrl-C: every atomic write removes its temp file
    and locks are released. (SIGKILL cannot be caught: its temp files go with the next write of the file.)"""

    def stop(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def command_of(argv: list[str]) -> str | None:
    """The command an argument list names: its first word, after any ``--debug``, where that is a known command;
    else None, and every command is built: no command, an unknown one, or any other top-level option before it
    (``--help``, ``--version`` and their abbreviations, ``--``), whose help or error lists them all."""
    for arg in argv:
        if arg == "--debug":
            continue
        if arg.startswith("-"):
            return None
        return arg if "_" not in arg and command_module(arg) in COMMAND_MODULES else None
    return None


def command_module(command: str) -> str:
    """The module that registers ``command`` (``train-align``: ``cianet.commands.train_align``)."""
    return "cianet.commands." + command.replace("-", "_")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(command_of(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):  # no command: a usage error
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    prefix = f"cianet {args.command}"
    _one_line_warnings(prefix)
    try:
        from cianet.utils.progress import forced_progress  # lazy: tqdm loads once a command runs, not for --help

        forced = False if getattr(args, "no_progress", False) else (True if getattr(args, "progress", False) else None)
        with result_stdout(args), forced_progress(forced), _terminate_as_interrupt():
            return int(args.func(args) or 0)  # --json: stdout holds the one JSON object alone
    except KeyboardInterrupt:
        advice = RESUME_ADVICE.get(args.command)
        print(f"{prefix}: interrupted (finished files are kept" + (f"; {advice})" if advice else ")"), file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CianetError, OSError) as exc:
        # Raised on purpose for bad input (a message naming the file or flag and the problem), or by the file
        # system (permission denied, disk full: the environment's, naming the file), not by a bug.
        if args.debug:
            traceback.print_exc()
        print(f"{prefix}: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, CianetError) else EXIT_INPUT
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback without --debug
        if args.debug:
            traceback.print_exc()
        log = None if args.debug else write_error_log(args.command, argv)
        where = f"; the traceback is in {log}" if log else ""
        print(
            f"{prefix}: internal error (a bug in cianet, please report it): {type(exc).__name__}: "
            f"{one_line(exc)}" + ("" if args.debug else f"{where}; rerun with --debug to see it here"),
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def error_log_dir() -> Path:
    """Where internal errors leave their traceback: ``$CIANET_LOG_DIR``, else the user's cache
    (``$XDG_CACHE_HOME/cianet/errors``). Never the command's output folder: a file cianet did not record
    there would make the folder look foreign to the retry."""
    if os.environ.get("CIANET_LOG_DIR"):
        return Path(os.environ["CIANET_LOG_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cianet" / "errors"


def write_error_log(command: str, argv: list[str] | None) -> Path | None:
    """Write the exception being handled, with the command line and versions, to a new file in
    :func:`error_log_dir`; its path, or None when it cannot be written (the one-line message still says what
    went wrong, so a read-only home must not turn a bug report into a second error)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = (
        f"cianet {__version__}, Python {platform.python_version()}, {platform.platform()}\n"
        f"command: cianet {' '.join(sys.argv[1:] if argv is None else argv)}\n\n{traceback.format_exc()}"
    )
    try:
        folder = error_log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stamp}-{command}-{os.getpid()}.log"
        path.write_text(text, encoding="utf-8")
        return path
    except OSError:
        return None


def console_main() -> NoReturn:
    """The ``cianet`` command and ``python -m cianet``: :func:`main` on ``sys.argv``, then exit with its code."""
    code = main()
    # Skip the interpreter's last garbage collections at exit, which walk every object torch and the command
    # left alive (0.6-1.7 s per training command on 2 cores, measured): the process ends here, and every file
    # cianet writes is closed (and renamed into place) before main returns.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console_main()

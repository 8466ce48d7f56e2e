"""The errors cianet raises on purpose, all under :class:`CianetError`.

The CLI prints any of them as one line (``cianet COMMAND: error: MESSAGE``) and exits with the class's
``exit_code``; messages therefore name the file or flag and the problem. The specific classes also derive
from the built-in exception that callers caught before this hierarchy existed (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so ``except ValueError`` keeps working.

Exit codes of the ``cianet`` command (see ``cianet.cli``):

    0  success
    1  the command ran, but some of its inputs failed (e.g. ``predict`` read none of the images,
       ``prepare --verify`` found a problem)
    2  usage or input error: a bad flag, a missing or unreadable file, a run that cannot go on
    3  internal error: a bug in cianet (or in a library it drives); the traceback goes to a log file the
       message names (``$CIANET_LOG_DIR``, default ``~/.cache/cianet/errors``), ``cianet --debug`` prints it
  130  interrupted (Ctrl-C); finished work is kept and the same command resumes where it can
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a process ended by Ctrl-C


class CianetError(Exception):
    """Base class of every deliberate cianet error; its message is meant for the user, as is."""

    exit_code: int = EXIT_INPUT


class UsageError(CianetError, ValueError):
    """A flag, or a combination of flags, that cannot work."""


class InputError(CianetError, ValueError):
    """A file or folder the user named exists but is not what it should be (foreign, stale or corrupt)."""


class MissingPathError(CianetError, FileNotFoundError):
    """A path the user gave (on the command line or in a config) does not exist; never silently replaced."""


class NonFiniteLossError(CianetError, RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class ExportError(CianetError, RuntimeError):
    """No ONNX exporter could export the network (a limit of the exporters, not of the input)."""

    exit_code = EXIT_INTERNAL

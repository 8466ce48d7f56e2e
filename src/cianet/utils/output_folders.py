"""Output folders cianet owns, and a lock for one writer at a time.

A command that writes a folder of results (``demo``, ``predict``) first *claims* it: a new or empty folder
gets a marker file (``.cianet-output.json``) naming the command and, as the command goes on, the files it
wrote (its manifest). A folder holding anything else is refused with a message that names what is there,
so a command can never delete or overwrite files it did not write itself; ``--fresh``/``--overwrite``
delete only what the manifest lists.

``output_lock`` keeps two processes from writing one folder at once: it creates ``.cianet.lock`` with
O_EXCL, holding the writer's pid and host. A lock left by a process that no longer runs (killed with
SIGKILL, a crashed machine) is stale and taken over; a live one is an error naming the pid.

A command killed with SIGKILL never reaches the end where it records what it wrote, so one that writes many
files (``predict``) also appends the names of the files it is *about to write* to a journal
(``.cianet-output.journal``, one JSON list a line, :func:`journal_outputs`); the manifest is the marker's list
plus the journal, so a later ``--overwrite`` deletes exactly what the killed run wrote (and the temp files its
interrupted writes left).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from cianet.errors import InputError
from cianet.utils.atomic import atomic_write_json

MARKER = ".cianet-output.json"
JOURNAL = ".cianet-output.journal"
LOCK = ".cianet.lock"
_FORMAT = 1
#: a lock file that cannot be read is taken for stale once it is this old (a writer killed between
#: creating and filling it); younger ones may still be being written
_UNREADABLE_LOCK_GRACE_S = 10.0


def describe_entries(folder: Path, limit: int = 3) -> str:
    """``'a.png, b.csv and 5 more'``: the first few entries of a folder, for error messages."""
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of a folder cianet claimed, or None when there is none (or it is not ours)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str) or not isinstance(data.get("files"), list):
        return None
    journal = _journal_names(Path(folder))
    if journal:
        data["files"] = sorted({*map(str, data["files"]), *journal})
    return data


def _journal_names(folder: Path) -> list[str]:
    """The names appended by :func:`journal_outputs`; a line torn by a crash is not valid JSON and is skipped."""
    try:
        lines = (folder / JOURNAL).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return []
    names = []
    for line in filter(None, lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, list):
            names += [n for n in entry if isinstance(n, str)]
    return names


def _write_marker(folder: Path, kind: str, files: Iterable[str]) -> None:
    """Write the marker with ``files`` (which hold the journal's names: callers read them with read_marker),
    then drop the journal; killed in between, the journal only repeats names the marker holds."""
    atomic_write_json(folder / MARKER, {"format": _FORMAT, "kind": kind, "files": sorted(set(files))})
    with contextlib.suppress(FileNotFoundError):
        (folder / JOURNAL).unlink()


def claim_output(
    folder: str | os.PathLike, kind: str, *, adopt: Iterable[str] = (), adopt_if: Iterable[str] = ()
) -> Path:
    """Make ``folder`` a ``kind`` output folder (creating it), or check that it already is one.

    Refused (InputError): a path that is a file, a folder claimed by another kind of output, a non-empty
    folder without a marker. ``adopt``: entry names (or glob patterns such as ``.*.tmp``) that, when they
    are all a markerless folder holds, show it was written by an older cianet that wrote no marker; such a
    folder is claimed. ``adopt_if``: names of which such a folder must also hold one (a file only that
    command writes, e.g. its checkpoint), so that a folder holding, say, only a user's ``config.yaml`` is
    never taken for an old output. A folder holding nothing but a lock and marker temp files counts as empty
    (another process claiming it at this moment).
    """
    folder = Path(folder)
    if check_claimable(folder, kind, adopt=adopt, adopt_if=adopt_if):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    _write_marker(folder, kind, [])
    return folder


def check_claimable(
    folder: str | os.PathLike, kind: str, *, adopt: Iterable[str] = (), adopt_if: Iterable[str] = ()
) -> bool:
    """The checks of :func:`claim_output`, creating nothing: InputError when ``folder`` may not be claimed for
    ``kind``; True when it is claimed already (it has a ``kind`` marker), False when it may be."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder; give a folder path (it is never replaced)")
    if folder.is_dir():
        marker = read_marker(folder)
        if marker is not None:
            if marker["kind"] != kind:
                raise InputError(
                    f"{folder}: holds the output of cianet {marker['kind']}, not of cianet {kind}; "
                    "choose another folder"
                )
            return True
        entries = {
            p.name
            for p in folder.iterdir()
            if p.name != LOCK and not (p.name.startswith(f".{MARKER}.") and p.name.endswith(".tmp"))
        }
        adopt, adopt_if = tuple(adopt), set(adopt_if)
        old_output = (
            bool(adopt)
            and all(any(fnmatch.fnmatchcase(e, pat) for pat in adopt) for e in entries)
            and (not adopt_if or bool(entries & adopt_if))
        )
        if entries and not old_output:
            raise InputError(
                f"{folder}: not empty and not written by cianet {kind} (it holds "
                f"{describe_entries(folder)}); choose a new or empty folder"
            )
    return False


def record_outputs(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Add ``names`` (relative to ``folder``) to the manifest of a claimed folder."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        raise InputError(f"{folder}: no {MARKER} (the folder was not claimed)")
    _write_marker(folder, marker["kind"], [*marker["files"], *names])


def journal_outputs(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Add ``names`` to the manifest of a claimed folder *before* writing them: one line appended to the
    journal (a single write, so a SIGKILL leaves the line whole or absent), cheap enough to call per image.

    Names recorded but never written (killed first) are skipped by :func:`remove_recorded`.
    """
    # The leading newline starts a fresh line even after a line torn by a crash of the machine.
    line = ("\n" + json.dumps(sorted({str(n) for n in names})) + "\n").encode("utf-8")
    fd = os.open(Path(folder) / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def remove_recorded(folder: str | os.PathLike) -> list[str]:
    """Delete the files the manifest of a claimed folder lists (and nothing else); returns their names.

    Only files (and links) are deleted, never a folder wholesale: a listed name that is a folder (a user may
    have put anything in it) is kept, and so is every name that does not lie inside ``folder`` (absolute,
    ``..``, ``.``, through a link): a manifest is data, not a command. Sub-folders left empty by the deletion
    are removed. Also deleted: the temp files (``.NAME.PID.RANDOM.tmp``) of listed names whose writer no
    longer runs, left by a write that was killed.
    """
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        return []
    removed = []
    root = folder.resolve()
    for name in marker["files"]:
        path = inside(folder, str(name))
        if path is None or path.name in (MARKER, JOURNAL, LOCK) or (path.is_dir() and not path.is_symlink()):
            continue
        if not (path.exists() or path.is_symlink()):
            continue
        path.unlink()
        removed.append(str(name))
        _remove_empty_parents(path.parent, root)
    listed = {str(n) for n in marker["files"]}
    for tmp in folder.rglob(".*.tmp"):  # one scan of the folder, not one per listed name
        name_pid = tmp.name[1 : -len(".tmp")].rpartition(".")[0]  # .NAME.PID.RANDOM.tmp -> NAME.PID
        name, _, pid = name_pid.rpartition(".")
        rel = str((tmp.parent / name).relative_to(folder))
        if rel in listed and pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
    _write_marker(folder, marker["kind"], [])
    return removed


def inside(folder: Path, name: str) -> Path | None:
    """``folder / name`` when that path (links resolved) lies strictly inside ``folder``, else None."""
    if not name or Path(name).is_absolute() or any(part in ("..", ".") for part in name.replace("\\", "/").split("/")):
        return None
    path = folder / name
    root = folder.resolve()
    try:
        real = path.parent.resolve() / path.name  # the entry itself may be a link: it is removed, not followed
    except OSError:
        return None
    return path if real != root and real.is_relative_to(root) else None


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder.resolve() != root and folder.resolve().is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): stop
            return
        folder = folder.parent


def refuse_replace(path: str | os.PathLike, overwrite: bool, flag: str = "--out") -> Path:
    """Check that the command may write the file ``path``: a new path, or any existing file with ``--overwrite``
    (which then replaces that one file and nothing else). InputError naming the file otherwise; a folder is
    never replaced."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a folder; give the path of a file to write (a folder is never replaced)")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise InputError(
            f"{flag} {path}: the file already exists and is never replaced silently; pass "
            "--overwrite to replace it (that file only), or choose another path"
        )
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _lock_is_stale(path: Path) -> bool:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        pid, host = int(info["pid"]), str(info["host"])
    except FileNotFoundError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return time.time() - path.stat().st_mtime > _UNREADABLE_LOCK_GRACE_S
        except FileNotFoundError:
            return True
    if host != socket.gethostname():
        return False  # cannot tell whether a process on another machine still runs
    return not _pid_alive(pid)


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, what: str = "cianet") -> Iterator[Path]:
    """Hold ``folder/.cianet.lock`` while writing ``folder``; InputError if a live process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    payload = json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "what": what,
        }
    )
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _lock_is_stale(path):
                # Rename before deleting, so that of two processes finding the same stale lock only one removes it.
                grave = path.with_name(f"{LOCK}.stale.{os.getpid()}")
                with contextlib.suppress(FileNotFoundError):
                    os.replace(path, grave)
                    grave.unlink()
                continue
            try:
                holder = json.loads(path.read_text(encoding="utf-8"))
                who = (
                    f"pid {holder.get('pid')} on {holder.get('host')}, {holder.get('what')}, "
                    f"since {holder.get('started')}"
                )
            except (OSError, ValueError):
                who = "a process that is starting"
            raise InputError(
                f"{folder}: another cianet process is writing here ({who}); wait for it to end, "
                f"or delete {path} if no such process runs"
            ) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(payload)
        break
    else:
        raise InputError(f"{folder}: could not take the lock {path} (it keeps reappearing)")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                path.unlink()


@contextlib.contextmanager
def owned_output(
    folder: str | os.PathLike,
    kind: str,
    *,
    overwrite: bool = False,
    flag: str = "--overwrite",
    adopt: Iterable[str] = (),
) -> Iterator[Path]:
    """Claim ``folder`` for ``kind`` and hold its lock while the block writes it.

    When the folder holds the recorded output of an earlier ``kind`` run, that output is deleted first with
    ``overwrite`` (and nothing else is), else refused naming ``flag``. The block records every file it writes
    *before* writing it (:func:`journal_outputs`): only those are ever deleted by a later ``overwrite``, never a
    file someone else put into the folder while the block ran.
    """
    folder = claim_output(folder, kind, adopt=adopt)
    with output_lock(folder, f"cianet {kind}"):
        marker = read_marker(folder) or {"files": []}
        if marker["files"]:
            if not overwrite:
                names = sorted(marker["files"])
                shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                raise InputError(
                    f"{folder}: holds the output of an earlier cianet {kind} ({shown}); pass {flag} "
                    "to replace it, or choose another folder"
                )
            remove_recorded(folder)
        try:
            yield folder
        finally:
            record_outputs(folder, [])  # folds the journal into the marker


@contextlib.contextmanager
def writing_into(folder: str | os.PathLike, what: str, names: Iterable[str] = ()) -> Iterator[Path]:
    """Hold the lock of ``folder`` (a run or predict folder another command writes into: ``evaluate``, ``view``)
    while the block writes, then claim what it wrote: the ``names`` (relative to ``folder``) that exist are added
    to the folder's manifest when it has a marker. A folder that cannot be locked (read-only) is an error before
    anything is written."""
    folder = Path(folder)
    with output_lock(folder, what):
        yield folder
        if read_marker(folder) is not None:
            record_outputs(folder, [n for n in names if inside(folder, n) is not None and (folder / n).is_file()])

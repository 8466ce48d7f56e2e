"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A reader (or a killed run) sees either the old file or the complete new one, never a torn write. The
temporary file is ``.NAME.PID.RANDOM.tmp``; one left by a killed writer (its pid no longer runs) is removed
by the next write of the same file that asks for it (``clean_stale=True``: checkpoints, caches).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: a temporary file without a pid in its name (written by an older cianet) counts as stale after this long
_LEGACY_TEMP_AGE_S = 600.0


def stale_temps(path: str | os.PathLike) -> list[Path]:
    """Temporary files of ``path`` left by writers that no longer run (killed mid-write)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix = temp_prefix(path)[: -len(f"{os.getpid()}.")]
    stale = []
    for tmp in path.parent.glob(f"{glob_escape(prefix)}*.tmp"):
        middle = tmp.name[len(prefix) : -len(".tmp")]
        pid_text = middle.split(".", 1)[0]
        try:
            if pid_text.isdigit() and "." in middle:
                alive = _pid_alive(int(pid_text))
            else:
                alive = time.time() - tmp.stat().st_mtime < _LEGACY_TEMP_AGE_S
        except FileNotFoundError:
            continue
        if not alive:
            stale.append(tmp)
    return stale


#: names longer than this (in bytes) get a shortened temp-file prefix: the file system's limit is 255 bytes
_MAX_TEMP_STEM = 120


def temp_prefix(path: Path) -> str:
    """``.NAME.PID.``: the prefix of this process's temp files for ``path``; a long NAME is cut and suffixed with
    a hash of the whole name, so the temp file's name stays within the file system's limit."""
    name = path.name
    raw = os.fsencode(name)
    if len(raw) > _MAX_TEMP_STEM:
        cut = raw[: _MAX_TEMP_STEM - 10].decode("utf-8", "ignore").encode("utf-8")  # whole characters only
        name = os.fsdecode(cut) + "~" + hashlib.sha256(raw).hexdigest()[:8]
    return f".{name}.{os.getpid()}."


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, clean_stale: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. ``clean_stale``: first
    remove the temporary files of ``path`` that killed writers left (worth it for large files). A folder at
    ``path`` is never replaced: IsADirectoryError, an OSError as the file system's own refusals, so that a
    command writing many files (``cianet predict``) fails that one file and goes on.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; give the path of a file to write (a folder is never replaced)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if clean_stale:
        for tmp in stale_temps(path):
            tmp.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the final file the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Strict JSON (NaN and infinities become null: strict parsers reject the bare tokens)."""
    atomic_write_text(path, json.dumps(strict_json(obj), indent=indent, sort_keys=False, allow_nan=False) + "\n")


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (numpy scalars and arrays become lists/floats)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "tolist") and type(obj).__module__ == "numpy":
        return strict_json(obj.tolist())
    return obj


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file and rename."""
    import torch  # lazy: the config, splits and caches write through this module without torch

    with atomic_path(path, clean_stale=True) as tmp:
        torch.save(obj, tmp)

"""Results of reading a file, remembered while the file stays the same (one process)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: reader -> (the identity of the file it last read, what it made of it), for :func:`parsed_once`
_last_parsed: dict[Callable, tuple[tuple, Any]] = {}


def parsed_once(path: Path, parse: Callable[[Path], T]) -> T:
    """``parse(path)``, remembered for the last file each reader read, keyed by that file's identity, size and
    change times (a rewrite or a replacement reads it again).

    What is read more than once in a process: the big tables (NIH's 112,120 rows, VinDr-CXR's 67,914 take a
    second or more to parse), the alignment checkpoint each stage of a run asks for, a bundle's checksums; by a
    notebook, a test session, several commands in one interpreter. The result is shared between callers: they
    must copy what they modify."""
    try:
        st = os.stat(path)
    except OSError:
        return parse(path)  # the reader reports a missing or unreadable file in its own words
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    last = _last_parsed.get(parse)
    if last is not None and last[0] == key:
        return last[1]
    value = parse(path)
    _last_parsed[parse] = (key, value)
    return value

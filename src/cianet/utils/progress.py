"""Progress bars: tqdm on a terminal, silent elsewhere unless forced (CIANET_PROGRESS=1)."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def progress_enabled(disable: bool | None = None) -> bool:
    if disable is not None:
        return not disable
    forced = os.environ.get("CIANET_PROGRESS")
    if forced is not None:
        return forced not in ("0", "", "false")
    return sys.stderr.isatty()


def progress_bar(iterable: Iterable[T], desc: str = "", total: int | None = None, disable: bool | None = None, **kw):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not progress_enabled(disable), dynamic_ncols=True, **kw)

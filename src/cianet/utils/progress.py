"""Progress bars: tqdm on a terminal, silent elsewhere unless asked for.

Whether a bar is shown, in this order:

1. the caller turned it off (``disable=True``: ``--no-progress``, ``run.progress: false``): never;
2. the command line asked for bars (``--progress``, :func:`forced_progress`): always;
3. the environment variable ``CIANET_PROGRESS`` (``1``/``true``: always; ``0``/``false``/empty: never);
4. otherwise only when stderr is a terminal, so that logs and redirected stderr hold no bars.

``disable=False`` (a caller that does not object to bars) does *not* force one: a library default of
``progress=True`` must not fill a log file. Bars count images (``unit="img"``) where a loop goes by batches:
:func:`batch_progress`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

#: the command line's --progress / --no-progress for the command being run (None: not given)
_forced: bool | None = None
ENV = "CIANET_PROGRESS"


@contextlib.contextmanager
def forced_progress(value: bool | None) -> Iterator[None]:
    """Within the block, bars are always shown (True), never (False) or decided as usual (None)."""
    global _forced
    before, _forced = _forced, value
    try:
        yield
    finally:
        _forced = before


def progress_enabled(disable: bool | None = None) -> bool:
    """Whether a bar is shown (see the module docstring); ``disable`` True turns it off, False/None leave it."""
    if disable:
        return False
    if _forced is not None:
        return _forced
    env = os.environ.get(ENV)
    if env is not None:
        return env.strip().lower() not in ("0", "", "false", "no", "off")
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def progress_bar(iterable: Iterable[T], desc: str = "", total: int | None = None, disable: bool | None = None, **kw):
    kw.setdefault("unit", "img")  # every per-item loop of cianet goes over images
    return tqdm(iterable, desc=desc, total=total, disable=not progress_enabled(disable), dynamic_ncols=True, **kw)


def batch_progress(
    batches: Iterable[T],
    desc: str,
    total_images: int | None,
    disable: bool | None = None,
    count: Callable[[T], int] | None = None,
    leave: bool = True,
) -> BatchProgress:
    """``batches`` with a bar that counts images: each batch advances it by ``count(batch)`` (default: the
    length of the batch's ``"image"`` entry, or of the batch itself)."""
    return BatchProgress(batches, desc, total_images, disable, count, leave)


def chunk_progress(n: int, size: int, desc: str, disable: bool | None = None) -> BatchProgress:
    """The start of each chunk of ``size`` items in ``range(n)``, with a bar that counts the items (images)."""
    return batch_progress(range(0, n, size), desc, n, disable, count=lambda start: min(size, n - start))


class BatchProgress:
    """An iterable over batches whose bar counts images; ``set_postfix`` as tqdm's."""

    def __init__(
        self,
        batches: Iterable[Any],
        desc: str,
        total_images: int | None,
        disable: bool | None,
        count: Callable[[Any], int] | None,
        leave: bool,
    ) -> None:
        self.batches, self.count = batches, count or batch_size
        self.bar = tqdm(
            total=total_images,
            desc=desc,
            unit="img",
            disable=not progress_enabled(disable),
            dynamic_ncols=True,
            leave=leave,
        )

    def __iter__(self) -> Iterator[Any]:
        try:
            for batch in self.batches:
                n = self.count(batch)  # before the caller may move or consume the batch
                yield batch
                self.bar.update(n)
        finally:
            self.bar.close()

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def set_postfix(self, *args: Any, **kw: Any) -> None:
        self.bar.set_postfix(*args, **kw)


def dataset_size(loader: Any) -> int | None:
    """The number of images a loader goes through (its dataset's length), None when unknown."""
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None


def batch_size(batch: Any) -> int:
    """The number of images in a batch: a dict with an ``"image"`` tensor, or anything with a length."""
    if isinstance(batch, dict) and "image" in batch:
        return len(batch["image"])
    try:
        return len(batch)
    except TypeError:
        return 1

"""Work ahead of a consumer, in input order, with a bounded number of results held at once.

``cianet predict`` decodes the next images in a thread while the networks run on the current batch (image
decoding in PIL and the networks in torch both release the GIL, so they overlap on separate cores).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(
    items: Iterable[T], fn: Callable[[T], R], depth: int, workers: int = 1
) -> Iterator[tuple[T, R | None, BaseException | None]]:
    """``(item, fn(item), None)`` or ``(item, None, the exception fn raised)`` for every item, in input order.

    At most ``depth`` items are submitted ahead of the one being yielded (so at most ``depth + 1`` results
    exist at once: memory is bounded); ``workers`` threads run ``fn``. ``depth`` 0 runs ``fn`` inline, in the
    consumer's thread, as a plain loop would. An exception of ``fn`` does not stop the others: it is handed
    to the consumer with its item. Leaving the loop early cancels what was not started.
    """
    if depth < 0 or workers < 1:
        raise ValueError(f"prefetch: depth must be >= 0 and workers >= 1, got {depth} and {workers}")
    if depth == 0:
        for item in items:
            try:
                result = fn(item)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer with its item
                yield item, None, exc
                continue
            yield item, result, None
        return
    it = iter(items)
    pending: deque[tuple[T, Future]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cianet-prefetch") as pool:
        try:
            for item in it:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) > depth:
                    yield _result(*pending.popleft())
            while pending:
                yield _result(*pending.popleft())
        finally:
            for _, fut in pending:
                fut.cancel()


def _result(item, fut: Future):
    exc = fut.exception()
    return (item, None, exc) if exc is not None else (item, fut.result(), None)


class Behind:
    """Jobs run in one background thread, in the order they were given, at most ``depth`` not yet finished.

    The writing side of :func:`prefetch`: ``cianet predict`` hands each batch's outputs over and computes the
    next batch while they are written. ``submit`` waits when ``depth`` jobs are pending (memory stays bounded)
    and raises there the first exception a finished job raised; ``close`` waits for the rest and raises it too.
    ``depth`` 0 runs every job inline. Leaving a ``with`` block on an exception lets the running job finish
    (files are written atomically either way) and drops the ones not started.
    """

    def __init__(self, depth: int = 1) -> None:
        if depth < 0:
            raise ValueError(f"Behind: depth must be >= 0, got {depth}")
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cianet-writer") if depth else None
        self._pending: deque[Future] = deque()

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        if self._pool is None:
            fn(*args)
            return
        while len(self._pending) >= self.depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    def close(self) -> None:
        """Wait for every pending job (raising the first exception) and stop the thread."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def __enter__(self) -> Behind:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        for fut in self._pending:
            fut.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

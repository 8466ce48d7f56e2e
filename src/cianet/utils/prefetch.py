"""Work ahead of a consumer, in input order, with a bounded number of results held at once.

``cianet predict`` decodes the next images in a thread while the networks run on the current batch (image
decoding in PIL and the networks in torch both release the GIL, so they overlap on separate cores).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(items: Iterable[T], fn: Callable[[T], R], depth: int, workers: int = 1) -> Iterator[tuple[T, R | None, BaseException | None]]:
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

"""Seconds spent per named stage of a pipeline (decode, networks, writing, ...), summed over calls.

Stages may run in several threads at once (decoding ahead of the networks): their sums can then exceed the
wall time, which is the point: the difference is what the overlap hid.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class StageTimer:
    """Accumulates ``seconds[stage]`` and ``calls[stage]``; thread-safe.

    ``sync``: called before each reading of the clock (e.g. ``torch.cuda.synchronize``), so that asynchronous
    device work is charged to the stage that queued it.
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._sync = sync
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._sync is not None:
            self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.calls[name] = self.calls.get(name, 0) + 1


def stage(timer: StageTimer | None, name: str) -> contextlib.AbstractContextManager:
    """``timer.stage(name)``, or a context that does nothing when there is no timer."""
    return contextlib.nullcontext() if timer is None else timer.stage(name)

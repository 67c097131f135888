"""What the report writers share: a queue the reactor thread fills, one writer thread
that empties it, and close() Deferreds fired (in the reactor) once the thread is done."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred


class QueuedWriter:
    """State and hand-over of a queue-and-thread writer; subclasses write the items."""

    def __init__(self, call_in_reactor: Callable[..., object]) -> None:
        self._call_in_reactor = call_in_reactor
        self.dropped = 0
        self._queue: collections.deque[Any] = collections.deque()
        self._queued_bytes = 0
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        self._finished = False
        self._waiters: list[Deferred[None]] = []

    @property
    def queued(self) -> int:
        """Items waiting for the writer thread."""
        return len(self._queue)

    def _wait_for_finish(self) -> Deferred[None]:
        """A Deferred fired when the writer thread is done. Call with ``_cond`` held."""
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        self._closing = True
        self._cond.notify()
        return d

    def _finish(self) -> None:
        """Writer thread, at its end: whatever is still queued (only after a crash) is
        dropped, and every close() is told, in the reactor thread."""
        with self._cond:
            self._closing = True
            self._finished = True
            self.dropped += len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._call_in_reactor(d.callback, None)

"""Where report events go: a JSON-lines file written by one thread, memory, or several sinks.

The reactor thread must never wait for a disk. :class:`JsonLinesSink` therefore only encodes
the event and appends the line to a bounded queue; one dedicated writer thread takes batches
off the queue, writes each batch with plain ``os.write`` calls on a file opened in append
mode, and never holds the queue's lock while writing. A full queue drops the event (counted,
logged once per burst) instead of growing or blocking; a failing disk is logged once per
failure streak and retried, and the lines wait in the bounded queue meanwhile.

Events are encoded to JSON in the reactor thread, at ``emit``: under the GIL the writer thread
would not make encoding cheaper for the reactor, while encoding at once snapshots the event
(the caller may reuse its lists and dicts), reports an unencodable event to its emitter, and
lets the queue be bounded in bytes as well as in events.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from twinkly.report.events import encode_event
from twinkly.report.flushing import FlushPolicy
from twinkly.report.writer import QueuedWriter

_log = Logger(namespace="twinkly.report")


class IEventSink(Interface):
    """Receives report events (dicts made by :func:`twinkly.report.events.make_event`)."""

    def emit(event: dict) -> None:
        """Never blocks the reactor; never raises."""

    def close() -> Deferred:  # type: ignore[misc, empty-body]
        """Fires when everything emitted so far is on disk (flushed)."""


@implementer(IEventSink)
class JsonLinesSink(QueuedWriter):
    """Appends one JSON object per line to ``path``; never truncates or deletes it.

    ``emitted`` counts events given to :meth:`emit`, ``written`` those on disk, ``dropped``
    those lost (queue full, emitted after close, unencodable, or still failing to write at
    close) and ``write_errors`` the failed write attempts. ``call_in_reactor`` (default
    ``reactor.callFromThread``) is how the writer thread fires Deferreds and logs.
    """

    def __init__(
        self,
        path: str | Path,
        reactor: Any,
        max_queue: int = 100_000,
        *,
        max_queue_bytes: int = 64 * 1024 * 1024,
        batch_bytes: int = 1024 * 1024,
        retry_interval: float = 1.0,
        call_in_reactor: Callable[..., object] | None = None,
        flush_interval: float = 0.0,
        fsync: str = "never",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.batch_bytes = batch_bytes
        self.retry_interval = retry_interval
        super().__init__(call_in_reactor or reactor.callFromThread)
        self.emitted = 0
        self.written = 0
        self.write_errors = 0
        self._burst_drops = 0  # drops since the queue last had room
        self._fd: int | None = None
        self._failing = False  # writer thread only: inside a streak of write errors
        # reporting.flush-interval and reporting.fsync (guarded by _cond).
        self.policy = FlushPolicy(flush_interval, fsync, batch_bytes)
        self._clock = clock
        self._thread = threading.Thread(
            target=self._run, name=f"twinkly-report-writer:{self.path.name}", daemon=True
        )
        self._thread.start()

    # --- reactor thread -----------------------------------------------------------------

    def emit(self, event: dict) -> None:
        try:
            line = encode_event(event)
        except Exception:
            with self._cond:
                self.emitted += 1
                self.dropped += 1
            _log.failure("Unencodable report event dropped (kind {kind!r})", kind=_kind(event))
            return
        with self._cond:
            self.emitted += 1
            if self._closing:
                self.dropped += 1
                return
            full = (
                len(self._queue) >= self.max_queue
                or self._queued_bytes + len(line) > self.max_queue_bytes
            )
            if full:
                self.dropped += 1
                self._burst_drops += 1
                burst_started = self._burst_drops == 1
                ended_burst = 0
            else:
                self._queue.append(line)
                self._queued_bytes += len(line)
                self.policy.queued(self._clock())
                self._cond.notify()
                ended_burst, self._burst_drops = self._burst_drops, 0
                burst_started = False
        if burst_started:
            _log.warn(
                "Report queue for {path} is full ({events} events, {size} bytes): dropping events",
                path=str(self.path),
                events=self.max_queue,
                size=self.max_queue_bytes,
            )
        elif ended_burst:
            _log.info(
                "Report queue for {path} has room again; {count} events were dropped",
                path=str(self.path),
                count=ended_burst,
            )

    def close(self) -> Deferred[None]:
        """Stop accepting events; fires once the queue is written and fsynced.

        If the file still cannot be written, one last attempt is made and the rest is counted
        in ``dropped`` (and logged): close never hangs, and its Deferred never fails."""
        with self._cond:
            if self._finished:
                return succeed(None)
            return self._wait_for_finish()

    # --- writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._write_until_closed()
        except Exception:  # a bug: say so, and still release the close() waiters
            failure = Failure()  # type: ignore[no-untyped-call]
            self._call_in_reactor(
                _log.failure, "Report writer for {path} crashed", failure, path=str(self.path)
            )
        finally:
            self._finish()

    def _write_until_closed(self) -> None:
        pending = b""  # a batch taken off the queue, not yet (completely) written
        count = 0  # events in that batch
        while True:
            sync = False
            with self._cond:
                if pending:
                    self._wait_before_retry()
                else:
                    sync = self._wait_for_work()
                    if not sync:
                        pending, count = self._take_batch()
                closing = self._closing
            if sync:
                self._fsync()
                continue
            if pending:
                pending = pending[self._write(pending) :]
                if not pending:
                    self._count_written(count)
                    with self._cond:
                        sync = self.policy.written(self._clock(), not self._queue)
                    if sync:
                        self._fsync()
                elif closing:  # the last attempt failed too: give up rather than hang
                    self._give_up(count, pending)
                    return
            elif closing:  # nothing queued and nothing pending
                self._sync_and_close()
                return

    def _wait_for_work(self) -> bool:
        """Sleep until a batch is due (True: an fsync is due first). Holds the lock."""
        policy = self.policy
        while True:
            now = self._clock()
            write_in = policy.write_in(now, self._queued_bytes, self._closing)
            sync_in = policy.sync_in(now)
            if not self._queue and self._closing:
                return False
            if sync_in <= 0 and sync_in <= write_in:
                return True
            if write_in <= 0 and self._queue:
                return False
            timeout = min(write_in, sync_in)
            self._cond.wait(None if timeout == float("inf") else timeout)

    def _fsync(self) -> None:
        fd = self._fd
        if fd is not None:
            try:
                os.fsync(fd)
            except OSError as e:
                self._write_failed(e)
        with self._cond:
            self.policy.synced(self._clock())

    def _wait_before_retry(self) -> None:
        """After a write error: wait ``retry_interval`` (or until close). Holds the lock."""
        deadline = time.monotonic() + self.retry_interval
        while not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)

    def _take_batch(self) -> tuple[bytes, int]:
        """Lines off the queue, up to ``batch_bytes`` (at least one). Holds the lock."""
        lines: list[bytes] = []
        size = 0
        while self._queue and (not lines or size + len(self._queue[0]) <= self.batch_bytes):
            line = self._queue.popleft()
            lines.append(line)
            size += len(line)
        self._queued_bytes -= size
        return b"".join(lines), len(lines)

    def _write(self, data: bytes) -> int:
        """Write as much of ``data`` as the disk takes; returns how many bytes went out."""
        done = 0
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                self._fd = os.open(self.path, flags, 0o644)
            view = memoryview(data)
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError as e:
            self._write_failed(e)
            return done
        if self._failing:
            self._failing = False
            self._call_in_reactor(_log.info, "Writing {path} again", path=str(self.path))
        return done

    def _write_failed(self, error: OSError) -> None:
        with self._cond:
            self.write_errors += 1
        if self._fd is not None:  # reopen next time: the file may have been moved or fixed
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
        if not self._failing:
            self._failing = True
            self._call_in_reactor(
                _log.error,
                "Cannot write report file {path}: {error}; retrying",
                path=str(self.path),
                error=str(error),
            )

    def _count_written(self, count: int) -> None:
        with self._cond:
            self.written += count

    def _give_up(self, count: int, unwritten: bytes) -> None:
        lost_in_batch = unwritten.count(b"\n")
        with self._cond:
            self.written += count - lost_in_batch
            lost = lost_in_batch + len(self._queue)
            self.dropped += lost
            self._queue.clear()
            self._queued_bytes = 0
        self._sync_and_close()
        self._call_in_reactor(
            _log.error,
            "Closing report file {path}: {count} events could not be written",
            path=str(self.path),
            count=lost,
        )

    def _sync_and_close(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except OSError as e:
            self._write_failed(e)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)


@implementer(IEventSink)
class MemorySink:
    """Keeps the last ``max_events`` events, for tests and for a live view (e.g. manhole)."""

    def __init__(self, max_events: int = 1000) -> None:
        self.events: collections.deque[dict] = collections.deque(maxlen=max_events)
        self.emitted = 0
        self.dropped = 0
        self.closed = False

    def emit(self, event: dict) -> None:
        self.emitted += 1
        if self.closed:
            self.dropped += 1
        else:
            self.events.append(event)

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)

    def by_kind(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("kind") == kind]


@implementer(IEventSink)
class FanOutSink:
    """Gives every event to each of several sinks; closes them all."""

    def __init__(self, *sinks: Any) -> None:  # each providing IEventSink
        self.sinks = sinks

    def emit(self, event: dict) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # a sink broke its promise; the others still get the event
                _log.failure("Report sink {sink!r} raised", sink=sink)

    def close(self) -> Deferred[None]:
        closing = [sink.close() for sink in self.sinks]
        return gatherResults(closing, consumeErrors=True).addCallback(_nothing)


def _nothing(_: object) -> None:
    return None


def _kind(event: object) -> object:
    return event.get("kind") if isinstance(event, dict) else type(event).__name__

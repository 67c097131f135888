"""When the events writer writes and fsyncs: ``reporting.flush-interval`` and
``reporting.fsync``, as a plain state machine the writer thread consults.

- Lines wait in the queue at most ``interval`` seconds (or until ``batch_bytes`` are
  queued, or close): a SIGKILL loses at most the last interval's events; a SIGTERM
  closes the sink, which writes and fsyncs everything.
- ``fsync``: ``never`` (the page cache is enough: a killed process loses nothing
  written), ``interval`` (written data is fsynced at most ``interval`` after it was
  written, and at most once per interval), ``always`` (after every write).

No threads and no clock of its own here: ``now`` is passed in, so tests drive it with a
``MemoryReactorClock``'s ``seconds``.
"""

from __future__ import annotations

FSYNC_MODES = ("never", "interval", "always")


class FlushPolicy:
    def __init__(self, interval: float = 1.0, fsync: str = "interval", batch_bytes: int = 1 << 20):
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}, got {fsync!r}")
        self.interval = interval
        self.fsync = fsync
        self.batch_bytes = batch_bytes
        self.first_queued: float | None = None  # when the oldest unwritten line came
        self.dirty_since: float | None = None  # written, not yet fsynced
        self.last_sync = float("-inf")
        self.syncs = 0

    def queued(self, now: float) -> None:
        """A line was queued (only the first of a batch starts the clock)."""
        if self.first_queued is None:
            self.first_queued = now

    def write_in(self, now: float, queued_bytes: int, closing: bool) -> float:
        """Seconds until the queue should be written: 0 for now; inf with nothing queued."""
        if self.first_queued is None:
            return float("inf")
        if closing or queued_bytes >= self.batch_bytes or self.interval <= 0:
            return 0.0
        return max(0.0, self.first_queued + self.interval - now)

    def written(self, now: float, queue_empty: bool) -> bool:
        """After a write; True when the writer must fsync now."""
        if queue_empty:
            self.first_queued = None
        elif self.first_queued is not None:
            self.first_queued = now  # the rest waits at most another interval
        if self.fsync == "never":
            return False
        if self.dirty_since is None:
            self.dirty_since = now
        return self.sync_in(now) == 0.0

    def sync_in(self, now: float) -> float:
        """Seconds until written data must be fsynced; inf when none is waiting."""
        if self.dirty_since is None or self.fsync == "never":
            return float("inf")
        if self.fsync == "always":
            return 0.0
        # dirty_since is never before the last fsync: so also at most once per interval.
        return max(0.0, self.dirty_since + self.interval - now)

    def synced(self, now: float) -> None:
        self.dirty_since = None
        self.last_sync = now
        self.syncs += 1

    def wait(self, now: float, queued_bytes: int, closing: bool) -> float:
        """How long the writer may sleep before it has something to do."""
        return min(self.write_in(now, queued_bytes, closing), self.sync_in(now))

"""reporting.flush-interval and reporting.fsync: the policy on a MemoryReactorClock, then
the sink's writer thread with it (a real thread and a temporary file; no reactor)."""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twinkly.report.flushing import FlushPolicy
from twinkly.report.sink import JsonLinesSink

INF = float("inf")


class FlushPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()

    def test_lines_wait_at_most_one_interval(self) -> None:
        policy = FlushPolicy(1.0, "never", batch_bytes=100)
        self.assertEqual(policy.write_in(self.clock.seconds(), 0, False), INF)
        policy.queued(self.clock.seconds())
        self.clock.advance(0.4)
        policy.queued(self.clock.seconds())  # a later line does not push the deadline
        self.assertAlmostEqual(policy.write_in(self.clock.seconds(), 20, False), 0.6)
        self.assertEqual(policy.write_in(self.clock.seconds(), 100, False), 0.0, "a full batch")
        self.assertEqual(policy.write_in(self.clock.seconds(), 20, True), 0.0, "closing")
        self.clock.advance(0.6)
        self.assertEqual(policy.write_in(self.clock.seconds(), 20, False), 0.0)
        self.assertFalse(policy.written(self.clock.seconds(), True), "fsync never")
        self.assertEqual(policy.wait(self.clock.seconds(), 0, False), INF)

    def test_zero_interval_writes_at_once(self) -> None:
        policy = FlushPolicy(0.0, "never")
        policy.queued(self.clock.seconds())
        self.assertEqual(policy.write_in(self.clock.seconds(), 1, False), 0.0)

    def test_fsync_always(self) -> None:
        policy = FlushPolicy(1.0, "always")
        policy.queued(0.0)
        self.assertTrue(policy.written(0.0, True))
        policy.synced(0.0)
        self.assertEqual(policy.sync_in(0.0), INF)

    def test_fsync_interval_at_most_once_per_interval(self) -> None:
        policy = FlushPolicy(1.0, "interval", batch_bytes=10)
        now = self.clock.seconds
        syncs = []
        for _ in range(50):  # full batches every 0.1 s
            policy.queued(now())
            if policy.written(now(), True) or policy.sync_in(now()) == 0:
                policy.synced(now())
                syncs.append(now())
            self.clock.advance(0.1)
            if policy.sync_in(now()) == 0:
                policy.synced(now())
                syncs.append(now())
        gaps = [b - a for a, b in itertools.pairwise(syncs)]
        self.assertTrue(all(g >= 0.999 for g in gaps), gaps)
        self.assertGreaterEqual(len(syncs), 4)
        # Written data never waits more than an interval for its fsync.
        policy.written(now(), True)
        self.assertLessEqual(policy.sync_in(now()), 1.0)

    def test_bad_mode(self) -> None:
        with self.assertRaises(ValueError):
            FlushPolicy(1.0, "sometimes")


class SinkFlushingTests(SynchronousTestCase):
    def make(self, **kwargs) -> tuple[JsonLinesSink, Path]:
        path = Path(tempfile.mkdtemp()) / "events.jsonl"
        sink = JsonLinesSink(path, None, call_in_reactor=lambda f, *a, **k: f(*a, **k), **kwargs)
        self.addCleanup(sink.close)
        return sink, path

    def lines(self, path: Path) -> int:
        return path.read_bytes().count(b"\n") if path.exists() else 0

    def wait_for(self, predicate, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self.assertLess(time.monotonic(), deadline, "timed out")
            time.sleep(0.01)

    def test_lines_reach_the_file_within_the_interval(self) -> None:
        sink, path = self.make(flush_interval=0.3, fsync="interval")
        started = time.monotonic()
        for n in range(5):
            sink.emit({"kind": "noise", "n": n})
        time.sleep(0.1)
        self.assertEqual(self.lines(path), 0, "batched for the interval")
        self.wait_for(lambda: self.lines(path) == 5)
        self.assertLess(time.monotonic() - started, 2.0)
        self.wait_for(lambda: sink.policy.syncs >= 1)

    def test_close_writes_everything_at_once(self) -> None:
        sink, path = self.make(flush_interval=60.0, fsync="always")
        for n in range(100):
            sink.emit({"kind": "noise", "n": n})
        done = []
        sink.close().addCallback(done.append)
        self.wait_for(lambda: done)
        self.assertEqual(self.lines(path), 100)
        self.assertEqual(sink.written, 100)

    def test_fsync_always_syncs_every_write(self) -> None:
        sink, path = self.make(flush_interval=0.0, fsync="always")
        synced = []
        real = os.fsync
        self.patch(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
        sink.emit({"kind": "noise"})
        self.wait_for(lambda: synced)
        self.assertEqual(self.lines(path), 1)

"""A slow client reading a huge result: Twinkly's memory stays flat while every row arrives.

The source of truth must be paused while the client does not read (its bytes would
otherwise pile up in the proxy), and the target, which nobody waits for, must be
streamed through without keeping its rows.
"""

from __future__ import annotations

import threading
import time

import psutil
import pytest
from pgwire import RawClient, count_rows_slowly

pytestmark = pytest.mark.backends

ROWS = 1_000_000
SQL = f"select g, repeat('x', 50) from generate_series(1, {ROWS}) g"
MAX_GROWTH = 60 * 1024 * 1024


class RssSampler(threading.Thread):
    """Samples a process's resident set size until stopped."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def test_slow_client_reads_a_million_rows_in_flat_memory(start_proxy) -> None:
    proxy = start_proxy("memory")
    process = psutil.Process(proxy.pid)
    with RawClient("127.0.0.1", proxy.port, timeout=30) as client:
        client.startup("twinkly", "app", application_name="twinkly-e2e-memory")
        # Warm up: the session exists, the hot path has run once.
        rows, errors = count_rows_slowly(
            client, "select g from generate_series(1, 1000) g", delay=0
        )
        assert (rows, errors) == (1000, [])
        baseline = process.memory_info().rss
        sampler = RssSampler(proxy.pid)
        sampler.start()
        started = time.monotonic()
        try:
            # ~72 MB of DataRows read at most ~8 MB/s: far slower than the servers send.
            rows, errors = count_rows_slowly(client, SQL, chunk=16384, delay=0.002)
        finally:
            sampler.stop()
        elapsed = time.monotonic() - started
        # The session is still in step afterwards.
        assert count_rows_slowly(client, "select 1", delay=0) == (1, [])
    growth = sampler.peak - baseline
    print(
        f"1M rows in {elapsed:.1f}s; RSS baseline {baseline / 2**20:.1f} MiB,"
        f" peak {sampler.peak / 2**20:.1f} MiB (+{growth / 2**20:.1f} MiB),"
        f" {sampler.samples} samples"
    )
    assert errors == []
    assert rows == ROWS
    assert elapsed < 60
    assert sampler.samples > 10
    assert growth < MAX_GROWTH, f"RSS grew by {growth / 2**20:.1f} MiB"

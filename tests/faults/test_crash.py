"""Events survive the proxy's end: SIGTERM writes every event; after SIGKILL at most
the last flush interval is lost."""

from __future__ import annotations

import signal
import time

import psycopg
from faultkit import events, wait_no_backends
from proxyproc import CLEAN_EXIT, start_proxy_process

MISMATCHES = 40


def differing_table(servers) -> None:
    for server in servers:
        with psycopg.connect(server.dsn(sslmode="disable"), autocommit=True) as conn:
            conn.execute("drop table if exists crash")
            conn.execute("create table crash (id int primary key, v int)")
            conn.execute("insert into crash values (1, %s)", (server.major,))


def mismatches(proxy, n: int) -> None:
    """n statements that differ on the two servers: one result_mismatch each."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for i in range(n):
            conn.execute(f"select v, {i} from crash").fetchall()


def count(proxy) -> int:
    return sum(1 for e in events(proxy) if e["kind"] == "result_mismatch")


def test_sigterm_writes_every_event(servers, tmp_path) -> None:
    differing_table(servers)
    # A long interval: nothing would reach the file on its own before the SIGTERM.
    proxy = start_proxy_process(
        *servers, tmp_path / "term", extra="reporting { flush-interval = 60s, fsync = interval }"
    )
    mismatches(proxy, MISMATCHES)
    time.sleep(0.3)  # the last pair compared
    assert count(proxy) == 0, "still batched"
    assert proxy.stop() in CLEAN_EXIT
    assert count(proxy) == MISMATCHES
    wait_no_backends(servers)


def test_sigkill_loses_at_most_the_last_interval(servers, tmp_path) -> None:
    differing_table(servers)
    proxy = start_proxy_process(
        *servers, tmp_path / "kill", extra="reporting { flush-interval = 200ms, fsync = interval }"
    )
    mismatches(proxy, MISMATCHES)
    time.sleep(0.6)  # more than an interval after the last event
    proxy.process.send_signal(signal.SIGKILL)
    proxy.process.wait(10)
    proxy.stop()
    assert count(proxy) == MISMATCHES
    wait_no_backends(servers)

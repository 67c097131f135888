"""The target unavailable: down at start (both modes), blackholed, stopped with
``-m immediate`` mid-session and restarted (a throwaway server, not the shared ones)."""

from __future__ import annotations

import time

import psycopg
import pytest
from faultkit import (
    Blackhole,
    closed_port,
    events,
    start_server,
    stop_server,
    wait_for,
    wait_no_backends,
)
from proxyproc import start_proxy_process

RETRY = "proxy { target-retry-initial = 300ms, target-retry-max = 1s }\n"


def kinds(proxy) -> list[str]:
    return [e["kind"] for e in events(proxy)]


def select_one(proxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_target_down_at_start_serves_on_the_truth(start_proxy, servers) -> None:
    proxy = start_proxy("down", ready=False, target_port=closed_port(), extra=RETRY)
    proxy.wait_listening()
    for _ in range(5):
        select_one(proxy)
    time.sleep(0.8)  # past a retry: still one event for the outage
    select_one(proxy)
    assert kinds(proxy) == ["backend_unavailable"]
    wait_no_backends(servers)


def test_target_down_at_start_refused_with_require_target(start_proxy, servers) -> None:
    proxy = start_proxy(
        "require", ready=False, target_port=closed_port(), extra="comparison.require-target = true"
    )
    proxy.wait_listening()
    for _ in range(3):
        with pytest.raises(psycopg.OperationalError, match="pg18"):
            psycopg.connect(proxy.dsn())
    wait_no_backends(servers)


def test_blackholed_target_costs_one_connect_timeout_per_backoff(start_proxy, servers) -> None:
    """A target that accepts and never answers: the first session waits the backend
    connect timeout once; the next sessions within the backoff do not wait at all."""
    hole = Blackhole()
    try:
        proxy = start_proxy(
            "blackhole",
            ready=False,
            target_port=hole.port,
            extra="proxy { target-retry-initial = 30s, target-retry-max = 30s }\n",
        )
        proxy.wait_listening()
        times = []
        for _ in range(8):
            started = time.monotonic()
            select_one(proxy)
            times.append(time.monotonic() - started)
        assert 4.0 < times[0] < 8.0, times  # connect-timeout = 5s in proxyproc
        assert max(times[1:]) < 1.0, times
        assert kinds(proxy) == ["backend_unavailable"]
    finally:
        hole.close()
    wait_no_backends(servers)


def test_target_stopped_immediate_then_restarted(throwaway, tmp_path) -> None:
    truth, target = throwaway
    for server in throwaway:
        with psycopg.connect(server.dsn(sslmode="disable"), autocommit=True) as conn:
            conn.execute("drop table if exists outage")
            conn.execute("create table outage (id int primary key, v text)")
            value = "same" if server is truth else "differs"
            conn.execute("insert into outage values (1, 'same'), (2, %s)", (value,))
    proxy = start_proxy_process(truth, target, tmp_path / "outage", extra=RETRY)
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as session:
            assert session.execute("select count(*) from outage").fetchone() == (2,)
            stop_server(target, "immediate")
            # The live session goes on with the truth alone...
            for _ in range(5):
                assert session.execute("select count(*) from outage").fetchone() == (2,)
            # ...and so do new sessions while the target is down.
            for _ in range(5):
                select_one(proxy)
            down = [e for e in events(proxy) if e["kind"] == "backend_unavailable"]
            assert len(down) == 1, down
            start_server(target)
            # New sessions compare again once a retry succeeds.
            wait_for(
                lambda: (select_one(proxy), "backend_recovered" in kinds(proxy))[1],
                10,
                "backend_recovered",
            )
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                conn.execute("select * from outage order by id").fetchall()
            wait_for(lambda: "result_mismatch" in kinds(proxy), 5, "a compared mismatch")
        recovered = next(e for e in events(proxy) if e["kind"] == "backend_recovered")
        assert recovered["sessions_not_compared"] >= 5
        wait_no_backends(throwaway)
    finally:
        proxy.stop()
        if not (target.datadir / "postmaster.pid").exists():
            start_server(target)
    assert not proxy.bad_log_lines(), proxy.bad_log_lines()

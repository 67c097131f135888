"""A lock cycle across the two databases, made on purpose with the real servers.

Session A holds row 1 on the truth; on the target it is held up (a direct transaction
holds row 2 there), so session B takes row 1 on the target first and then waits for A
on the truth. A's client waits for its lagging target (``max-target-lag = 3``, counting
results and sync points), A's target waits for B's row, B waits for A: neither server
can see the cycle. Without ``proxy.target-stall-timeout`` it never ends; with it, A's
target is dropped, both clients finish, and the drift is reported."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg
import pytest
from faultkit import backends_named, events, terminate, wait_for

LAG = "comparison.max-target-lag = 3\n"


@pytest.fixture
def rows(servers):
    for server in servers:
        with psycopg.connect(server.dsn(sslmode="disable"), autocommit=True) as conn:
            conn.execute("drop table if exists stall_t")
            conn.execute("create table stall_t (id int primary key, v int)")
            conn.execute("insert into stall_t values (1, 0), (2, 0)")
    return servers


NAMES = ("stall-a", "stall-b", "stall-blocker")


@contextlib.contextmanager
def cycle(proxy, truth, target) -> Iterator[tuple[Future, Future]]:
    """A's COMMIT and B's UPDATE then COMMIT, stuck in the cycle until it is broken.
    Whatever happens, every backend of the case is terminated at the end: a failing
    case must not leave threads or locks behind for the next one."""
    pool = ThreadPoolExecutor(2)
    opened: list = []
    try:
        blocker = psycopg.connect(target.dsn(sslmode="disable", application_name=NAMES[2]))
        opened.append(blocker)
        blocker.execute("select * from stall_t where id = 2 for update")  # the target only
        a = psycopg.connect(proxy.dsn(application_name=NAMES[0]))
        b = psycopg.connect(proxy.dsn(application_name=NAMES[1]))
        opened += (a, b)
        a.execute("update stall_t set v = v + 1 where id = 2")  # truth: done; target: waits
        a.execute("update stall_t set v = v + 1 where id = 1")  # truth: A holds row 1
        a_commit = pool.submit(a.commit)  # A's client now waits for its target

        def b_writes() -> None:
            b.execute("update stall_t set v = v + 10 where id = 1")
            b.commit()

        b_done = pool.submit(b_writes)
        # B takes row 1 on the target (A's target is still behind), then waits for A on
        # the truth.
        wait_for(lambda: _state(target, NAMES[1]) == "idle in transaction", 5, "B on target")
        wait_for(lambda: _waiting(truth, NAMES[1]), 5, "B waiting for A on the truth")
        blocker.rollback()  # A's target moves on, to row 1, held by B there: a cycle
        yield a_commit, b_done
    finally:
        for server in (truth, target):
            for name in NAMES:
                terminate(server, name)
        pool.shutdown(wait=True)
        for conn in opened:
            conn.close()


def _row(server, application: str) -> tuple | None:
    """(state, wait_event_type) of the session's backend on ``server``."""
    with psycopg.connect(server.dsn(sslmode="disable"), autocommit=True) as conn:
        found = conn.execute(
            "select state, wait_event_type from pg_stat_activity where application_name = %s",
            (application,),
        ).fetchall()
    return found[0] if found else None


def _state(server, application: str) -> str | None:
    row = _row(server, application)
    return row[0] if row else None


def _waiting(server, application: str) -> bool:
    row = _row(server, application)
    return row is not None and row[1] == "Lock"


def values(server) -> list[tuple]:
    with psycopg.connect(server.dsn(sslmode="disable"), autocommit=True) as conn:
        return conn.execute("select id, v from stall_t order by id").fetchall()


def test_the_stalled_target_is_dropped_and_both_clients_finish(start_proxy, rows) -> None:
    truth, target = rows
    proxy = start_proxy("stall", extra=LAG + "proxy.target-stall-timeout = 2s\n")
    started = time.monotonic()
    with cycle(proxy, truth, target) as (a_commit, b_done):
        a_commit.result(timeout=20)
        b_done.result(timeout=20)
        assert time.monotonic() - started < 15
        wait_for(lambda: not backends_named(target, "stall-a"), 5, "A's target to be gone")
        assert backends_named(truth, "stall-a")  # A itself is still served
    (stalled,) = [e for e in events(proxy) if e["kind"] == "target_stalled"]
    assert "kept the client waiting 2 s" in stalled["reason"]
    assert stalled["waited_s"] == 2
    # Both committed on the truth; on the target, A's writes are gone (reported above).
    assert values(truth) == [(1, 11), (2, 1)]
    assert values(target) == [(1, 10), (2, 0)]


def test_without_the_timeout_the_cycle_holds(start_proxy, rows) -> None:
    """What the timeout is for: the same cycle with it off is still there seconds later,
    until a backend of it is terminated by hand."""
    truth, target = rows
    proxy = start_proxy("no-stall", extra=LAG + "proxy.target-stall-timeout = 0\n")
    with cycle(proxy, truth, target) as (a_commit, b_done):
        time.sleep(3)
        assert not a_commit.done() and not b_done.done()
        assert _waiting(target, "stall-a") and _waiting(truth, "stall-b")
        terminate(target, "stall-a")  # what an operator would have to do
        a_commit.result(timeout=20)
        b_done.result(timeout=20)
    assert not [e for e in events(proxy) if e["kind"] == "target_stalled"]

"""The end of a session: what a client sent before it said goodbye still reaches the target.

The client only waits for the source of truth, so when it sends Terminate the target may
still be working through the statements before it. Twinkly must let the target finish
them (PostgreSQL itself stops at Terminate), not cut the connection under its feet.
"""

from __future__ import annotations

import time

import psycopg
import pytest

pytestmark = pytest.mark.backends


def test_short_sessions_lose_no_writes_on_the_target(proxy, both_equal) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("drop table if exists short_sessions")
        conn.execute("create table short_sessions (session int, n int)")
    for session in range(30):
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            for n in range(5):
                conn.execute("insert into short_sessions values (%s, %s)", (session, n))
    # Closing right after the last insert is what clients do; every row must arrive.
    assert both_equal("select count(*) from short_sessions") == [(150,)]


def test_lagging_target_finishes_after_the_client_left(proxy, both_equal) -> None:
    """A target held back by a lock still applies every write once the lock goes."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("drop table if exists lagging")
        conn.execute("create table lagging (n int)")
    both_equal("select count(*) from lagging")  # the table exists on the target too
    with psycopg.connect(proxy.target_dsn) as locker:
        locker.execute("lock table lagging in access exclusive mode")
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            for n in range(5):
                conn.execute("insert into lagging values (%s)", (n,))
        time.sleep(0.5)  # the client is gone; the target still waits for the lock
        locker.rollback()
    assert both_equal("select count(*), sum(n) from lagging") == [(5, 10)]


def test_terminate_in_a_pipeline_of_writes(proxy, both_equal) -> None:
    """Writes and Terminate in one burst (a pipeline, then close)."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("drop table if exists burst")
        conn.execute("create table burst (n int)")
    for _ in range(10):
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn, conn.pipeline():
            for n in range(100):
                conn.execute("insert into burst values (%s)", (n,))
    assert both_equal("select count(*) from burst") == [(1000,)]


def test_a_lagging_target_holds_the_client_back(start_proxy) -> None:
    """Past comparison.max-target-lag results, the client waits for the target; once
    the target catches up, everything completes on both servers."""
    import threading

    proxy = start_proxy("lag", extra="comparison.max-target-lag = 100")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("drop table if exists held_back")
        conn.execute("create table held_back (n int)")
    with psycopg.connect(proxy.target_dsn) as locker:
        locker.execute("lock table held_back in access exclusive mode")
        release = threading.Timer(1.5, locker.rollback)
        release.start()
        started = time.monotonic()
        try:
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                with conn.pipeline():
                    for n in range(2000):
                        conn.execute("insert into held_back values (%s)", (n,))
                elapsed = time.monotonic() - started
                assert conn.execute("select count(*) from held_back").fetchone() == (2000,)
        finally:
            release.join()
    assert elapsed > 1.0, f"the client ran {elapsed:.2f}s ahead of a stalled target"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with psycopg.connect(proxy.target_dsn) as conn:
            if conn.execute("select count(*) from held_back").fetchone() == (2000,):
                break
        time.sleep(0.1)
    with psycopg.connect(proxy.target_dsn) as conn:
        assert conn.execute("select count(*) from held_back").fetchone() == (2000,)


def _backend_pids(dsn: str, application: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select pid from pg_stat_activity where application_name = %s", (application,)
        ).fetchall()
    return [pid for (pid,) in rows]


def _terminate(dsn: str, pids: list[int]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for pid in pids:
            conn.execute("select pg_terminate_backend(%s)", (pid,))


def test_truth_backend_killed(proxy) -> None:
    """Losing the source of truth ends the session, and its target connection with it."""
    application = "twinkly-e2e-truth-killed"
    with psycopg.connect(proxy.dsn(application_name=application), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        truth_pids = _backend_pids(proxy.truth_dsn, application)
        assert len(truth_pids) == 1 and _backend_pids(proxy.target_dsn, application)
        _terminate(proxy.truth_dsn, truth_pids)
        time.sleep(0.3)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    deadline = time.monotonic() + 5
    while _backend_pids(proxy.target_dsn, application):
        assert time.monotonic() < deadline, "the target connection outlived its session"
        time.sleep(0.05)


def test_target_backend_killed(proxy, both_equal) -> None:
    """Losing the target does not disturb the client: it goes on with the truth alone."""
    application = "twinkly-e2e-target-killed"
    with psycopg.connect(proxy.dsn(application_name=application), autocommit=True) as conn:
        conn.execute("drop table if exists after_target_loss")
        conn.execute("create table after_target_loss (n int)")
        target_pids = _backend_pids(proxy.target_dsn, application)
        assert len(target_pids) == 1
        _terminate(proxy.target_dsn, target_pids)
        time.sleep(0.3)
        for n in range(20):
            conn.execute("insert into after_target_loss values (%s)", (n,))
        with conn.pipeline():
            cursors = [conn.execute("select %s::int", (n,)) for n in range(50)]
        assert [c.fetchone()[0] for c in cursors] == list(range(50))
        assert conn.execute("select count(*) from after_target_loss").fetchone() == (20,)
    # A new session has both backends again.
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("truncate after_target_loss")
        conn.execute("insert into after_target_loss values (1)")
    assert both_equal("select * from after_target_loss") == [(1,)]

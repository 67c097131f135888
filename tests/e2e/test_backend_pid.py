"""The process id the client is told is the truth session's: the one pg_backend_pid(),
notifications and pg_terminate_backend() speak of (found by psycopg's and asyncpg's own
suites: tests/test_notify.py, tests/test_listeners.py)."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = pytest.mark.backends


def test_backend_pid_is_the_truths(proxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        pid = conn.info.backend_pid
        assert conn.execute("select pg_backend_pid()").fetchone() == (pid,)
        conn.execute("listen twinkly_pid")
        conn.execute("notify twinkly_pid, 'mine'")
        assert [(n.payload, n.pid) for n in conn.notifies(timeout=5, stop_after=1)] == [
            ("mine", pid)
        ]


def test_terminating_the_told_pid_ends_the_session(proxy) -> None:
    with (
        psycopg.connect(proxy.dsn()) as victim,
        psycopg.connect(proxy.dsn(), autocommit=True) as other,
    ):
        victim.execute("select 1")
        other.execute("select pg_terminate_backend(%s)", [victim.info.backend_pid])
        with pytest.raises(psycopg.errors.AdminShutdown):
            victim.execute("select 1")

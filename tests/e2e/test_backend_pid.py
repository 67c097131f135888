"""The process id the client is told is the truth session's: the one pg_backend_pid(),
notifications and pg_terminate_backend() speak of (found by psycopg's and asyncpg's own
suites: tests/test_notify.py, tests/test_listeners.py)."""

from __future__ import annotations

import psycopg
import pytest
from pgwire import RawClient, error_fields, query_message, split_messages

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


def test_a_terminated_session_gets_the_servers_error_alone(proxy) -> None:
    """The server sends FATAL 57P01 and closes; Twinkly adds no error of its own (a
    second one would answer the client's next query: node-postgres' pool error tests)."""
    with RawClient("127.0.0.1", proxy.port) as client:
        client.startup("twinkly", "app")
        client.send(query_message("select pg_terminate_backend(pg_backend_pid())"))
        errors = [
            error_fields(payload)
            for type_byte, payload in split_messages(client.read_until_closed())
            if type_byte == b"E"
        ]
    assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "57P01")]

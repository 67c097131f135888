"""Stopping Twinkly with SIGTERM: it stops accepting at once, lets live sessions end for up
to proxy.shutdown-timeout, then closes them (and their backends) and exits."""

from __future__ import annotations

import ast
import re
import signal
import threading
import time

import psycopg
import pytest
from pgwire import RawClient, message, query_message
from proxyproc import CLEAN_EXIT

pytestmark = pytest.mark.backends

SHUTDOWN_TIMEOUT = 2.0
ABORT_GRACE = 1.0  # the longest a closed session may take to go before it is aborted


def _sessions(dsn: str, application_name: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "select pid from pg_stat_activity where application_name = %s", (application_name,)
        ).fetchall()


def _refused_within(proxy, seconds: float) -> float:
    """Time until the port refuses connections; fails if it still accepts after ``seconds``."""
    started = time.monotonic()
    while proxy.accepts():
        assert time.monotonic() - started < seconds, "still accepting connections"
        time.sleep(0.02)
    return time.monotonic() - started


def test_sigterm_closes_an_idle_session_after_the_timeout(start_proxy) -> None:
    proxy = start_proxy("sigterm-idle", shutdown_timeout="2s")
    application = "twinkly-e2e-sigterm-idle"
    conn = psycopg.connect(proxy.dsn(application_name=application), autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        assert _sessions(proxy.truth_dsn, application) and _sessions(proxy.target_dsn, application)
        started = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        assert _refused_within(proxy, 0.5) < 0.5
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn(connect_timeout="2"))
        code = proxy.process.wait(SHUTDOWN_TIMEOUT + ABORT_GRACE + 5)
        elapsed = time.monotonic() - started
        print(f"exited {elapsed:.2f}s after SIGTERM")
        assert code in CLEAN_EXIT, proxy.log_text()
        # It gave the idle session its whole timeout, then closed it and exited: a
        # session that closes at once needs no extra grace period.
        assert SHUTDOWN_TIMEOUT - 0.2 <= elapsed < SHUTDOWN_TIMEOUT + 0.5
        # The session was closed, as PostgreSQL closes sessions at shutdown...
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    finally:
        conn.close()
    # ...and so were its two backend connections.
    deadline = time.monotonic() + 5
    while _sessions(proxy.truth_dsn, application) or _sessions(proxy.target_dsn, application):
        assert time.monotonic() < deadline, "backend sessions left behind"
        time.sleep(0.05)
    assert "Traceback" not in proxy.log_text()


def test_sigterm_exits_as_soon_as_the_last_session_ends(start_proxy) -> None:
    proxy = start_proxy("sigterm-ends", shutdown_timeout="2s")
    conn = psycopg.connect(proxy.dsn(), autocommit=True)
    assert conn.execute("select 1").fetchone() == (1,)
    started = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    _refused_within(proxy, 0.5)
    # The session goes on working during the grace period, then leaves by itself.
    assert conn.execute("select 'still served'").fetchone() == ("still served",)
    closer = threading.Timer(0.3, conn.close)
    closer.start()
    code = proxy.process.wait(SHUTDOWN_TIMEOUT + ABORT_GRACE + 5)
    elapsed = time.monotonic() - started
    closer.join()
    assert code in CLEAN_EXIT
    assert elapsed < SHUTDOWN_TIMEOUT - 0.5, f"waited {elapsed:.1f}s for a session that had ended"


def test_sigterm_without_sessions_exits_at_once(start_proxy) -> None:
    proxy = start_proxy("sigterm-empty", shutdown_timeout="2s")
    started = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    code = proxy.process.wait(10)
    assert code in CLEAN_EXIT
    assert time.monotonic() - started < 1.0


def test_sigterm_waits_for_answers_a_leaving_client_left_owed(start_proxy) -> None:
    """A client that sends a query and its Terminate at once has left before either server
    answers; its backends are drained so the answers still get compared. A SIGTERM at that
    moment waits for them: the totals count the statement, none is lost from the report."""
    proxy = start_proxy("sigterm-drain", shutdown_timeout="5s")
    with RawClient("127.0.0.1", proxy.port) as client:
        client.startup("twinkly", "app", application_name="twinkly-e2e-sigterm-drain")
        client.send(query_message("select 42 from pg_sleep(0.8)") + message(b"X"))
        client.read_until_closed()
    proxy.process.send_signal(signal.SIGTERM)
    code = proxy.process.wait(15)
    assert code in CLEAN_EXIT, proxy.log_text()
    found = re.search(r"comparison totals: (\{.*?\})", proxy.log_text())
    assert found is not None, proxy.log_text()[-2000:]
    totals = ast.literal_eval(found[1])
    assert totals["matched"] >= 1 and totals["not_compared"] == 0, totals
    assert "waiting for 2 backend connections to send what they owe" in proxy.log_text()

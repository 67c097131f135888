"""A backend terminated mid-query (pg_terminate_backend from an admin connection), a
client killed mid-stream, a slow client on a large result."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
from faultkit import backends_named, events, kill_mid_stream, rss_mb, terminate, wait_for
from pgwire import RawClient, query_message

SLEEP = 1.5  # seconds the victim statement runs


def run_victim(proxy, application: str, protocol: str, in_transaction: bool, out: dict) -> None:
    """Run a sleeping statement through the proxy, then one more; record what happened."""
    kwargs = {"cursor_factory": psycopg.ClientCursor} if protocol == "simple" else {}
    started = time.monotonic()
    try:
        with psycopg.connect(
            proxy.dsn(application_name=application), autocommit=not in_transaction, **kwargs
        ) as conn:
            if in_transaction:
                conn.execute("select 1")
            if protocol == "simple":
                conn.execute(f"select pg_sleep({SLEEP})")
            else:
                conn.execute("select pg_sleep(%s::float8)", (SLEEP,))
            out["after"] = conn.execute("select 42").fetchone()
            if in_transaction:
                conn.commit()
            out["result"] = "ok"
    except psycopg.Error as e:
        out["result"] = "error"
        out["error"] = str(e)
    out["elapsed"] = time.monotonic() - started


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "transaction"])
@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize("side", ["truth", "target"])
def test_backend_terminated_mid_query(clean, servers, side, protocol, in_transaction) -> None:
    pg15, pg18 = servers
    victim, other = (pg15, pg18) if side == "truth" else (pg18, pg15)
    application = f"faults-{uuid.uuid4().hex[:10]}"
    cut_before = len([e for e in events(clean) if e["kind"] == "statement_cut_short"])
    out: dict = {}
    thread = threading.Thread(
        target=run_victim, args=(clean, application, protocol, in_transaction, out)
    )
    thread.start()
    wait_for(
        lambda: any("pg_sleep" in (row[3] or "") for row in backends_named(victim, application)),
        10,
        "the statement to run",
    )
    killed_at = time.monotonic()
    assert terminate(victim, application) == 1
    if side == "truth":
        # The client is told at once; the target's statement is cancelled, not run out.
        wait_for(lambda: not backends_named(other, application), SLEEP * 0.8, "target to stop")
        assert time.monotonic() - killed_at < SLEEP * 0.8
        thread.join(10)
        assert out["result"] == "error", out
        assert out["elapsed"] < SLEEP + 1
        wait_for(
            lambda: (
                len([e for e in events(clean) if e["kind"] == "statement_cut_short"]) > cut_before
            ),
            3,
            "the target's statement reported as cut short",
        )
    else:
        # The truth carries on: the client never notices.
        thread.join(10)
        assert out["result"] == "ok", out
        assert out["after"] == (42,)


def test_client_killed_mid_stream(clean, servers) -> None:
    """A client that vanishes during a 3M-row answer: both backends stop at once
    (cancelled), instead of running the statement out; reported as cut short."""
    application = f"faults-{uuid.uuid4().hex[:10]}"
    kill_mid_stream(clean.port, application)  # RST, as a killed process's socket gives
    gone = time.monotonic()
    for server in servers:
        wait_for(
            lambda s=server: not backends_named(s, application), 3.0, f"{server.label} to stop"
        )
    assert time.monotonic() - gone < 3.0
    cut = wait_for(
        lambda: [e for e in events(clean) if e["kind"] == "statement_cut_short"],
        3.0,
        "a statement_cut_short event",
    )
    assert "client left" in cut[-1]["reason"]


def test_slow_client_large_result_keeps_rss_bounded(clean, servers) -> None:
    """A client reading a ~150 MB answer slowly: the truth is paused, not buffered."""
    before = rss_mb(clean.pid)
    client = RawClient("127.0.0.1", clean.port, timeout=30)
    client.startup("twinkly", "app", "twinkly-pw", application_name="faults-slow")
    client.send(query_message("select g, repeat('y', 100) from generate_series(1, 1500000) g"))
    peak = before
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        client.sock.recv(16384)
        time.sleep(0.01)
        peak = max(peak, rss_mb(clean.pid))
    assert peak - before < 40, f"RSS grew from {before:.0f} to {peak:.0f} MB"
    client.abort()

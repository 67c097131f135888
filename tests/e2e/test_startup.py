"""Start-up as clients do it: encryption negotiation, start-up parameters that must reach
both backends, and many sessions at once."""

from __future__ import annotations

import asyncio
import struct
import time

import asyncpg
import psycopg
import pytest
from pgwire import RawClient, message, query_message, startup_packet

pytestmark = pytest.mark.backends

SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSSENC_REQUEST = struct.pack("!II", 8, 80877104)


def test_encryption_negotiation_then_login(proxy) -> None:
    """GSSENCRequest and SSLRequest are each refused with 'N'; the start-up then goes on."""
    with RawClient("127.0.0.1", proxy.port) as client:
        client.send(GSSENC_REQUEST)
        assert client.sock.recv(1) == b"N"
        client.send(SSL_REQUEST)
        assert client.sock.recv(1) == b"N"
        client.startup("twinkly", "app", application_name="twinkly-e2e-negotiation")
        assert client.parameters["server_version"].startswith("15.")
        assert client.backend_key is not None
        replies = client.simple_query("select 'negotiated'")
        assert [t for t, _ in replies] == [b"T", b"D", b"C", b"Z"]


def test_startup_and_first_query_in_one_packet(proxy) -> None:
    """Some clients send their first query without waiting for ReadyForQuery."""
    with RawClient("127.0.0.1", proxy.port) as client:
        client.send(
            startup_packet({"user": "twinkly", "database": "app"}) + query_message("select 40 + 2")
        )
        seen = []
        while len([t for t in seen if t == b"Z"]) < 2:
            type_byte, payload = client.read_message()
            seen.append(type_byte)
            if type_byte == b"D":
                assert payload.endswith(b"42")
        assert b"E" not in seen


def test_startup_parameters_reach_both_backends(proxy, both_equal) -> None:
    """options=-c ... and application_name apply on the target too (seen by its writes)."""
    for dsn in (proxy.truth_dsn, proxy.target_dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("drop schema if exists tw_opts cascade")
            conn.execute("create schema tw_opts")
            conn.execute("create table tw_opts.t (setting text, app text)")
    options = "-c search_path=tw_opts -c statement_timeout=4321"
    dsn = proxy.dsn(options=f"'{options}'", application_name="twinkly-e2e-options")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("show statement_timeout").fetchone() == ("4321ms",)
        conn.execute(
            "insert into t values (current_setting('statement_timeout'),"
            " current_setting('application_name'))"
        )
    # The unqualified insert landed in tw_opts.t on both servers, with the same settings.
    assert both_equal("select * from tw_opts.t") == [("4321ms", "twinkly-e2e-options")]


def test_many_sessions_at_once(proxy, both_equal) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("drop table if exists crowd")
        conn.execute("create table crowd (session int, n int, primary key (session, n))")

    async def session(number: int) -> int:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=proxy.port, user="twinkly", password="twinkly-pw",
            database="app", timeout=20,
        )  # fmt: skip
        try:
            async with conn.transaction():
                for n in range(50):
                    await conn.execute("insert into crowd values ($1, $2)", number, n)
            return await conn.fetchval("select count(*) from crowd where session = $1", number)
        finally:
            await conn.close()

    async def main() -> list[int]:
        return await asyncio.gather(*(session(i) for i in range(40)))

    assert asyncio.run(main()) == [50] * 40
    assert both_equal("select count(*), sum(n), sum(session) from crowd") == [
        (2000, 40 * sum(range(50)), 50 * sum(range(40)))
    ]


def test_asyncpg_timeout_cancels_on_both_backends(proxy) -> None:
    """asyncpg turns a timeout into a CancelRequest and waits for the query to end."""
    application = "twinkly-e2e-asyncpg-cancel"

    async def main() -> str:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=proxy.port, user="twinkly", password="twinkly-pw",
            database="app", timeout=10, server_settings={"application_name": application},
        )  # fmt: skip
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetch("select pg_sleep(20)", timeout=0.5)
            assert loop.time() - started < 5
            return await conn.fetchval("select 'usable'")
        finally:
            await conn.close()

    assert asyncio.run(main()) == "usable"
    deadline = time.monotonic() + 3
    while True:
        sleeping = [_sleeping(dsn, application) for dsn in (proxy.truth_dsn, proxy.target_dsn)]
        if sleeping == [0, 0] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sleeping == [0, 0], "a backend is still running the cancelled query"


def _sleeping(dsn: str, application: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "select count(*) from pg_stat_activity where application_name = %s"
            " and state = 'active' and query like '%%pg_sleep%%'",
            (application,),
        ).fetchone()[0]


def test_messages_split_into_single_bytes(proxy) -> None:
    """Framing across reads: a start-up packet and an extended-protocol exchange sent one
    byte at a time still work."""
    parse = message(b"P", b"\0select $1::int + 1\0\0\0")
    bind = message(b"B", b"\0\0" + struct.pack("!hhi", 0, 1, 2) + b"41" + struct.pack("!h", 0))
    describe = message(b"D", b"P\0")
    execute = message(b"E", b"\0" + struct.pack("!i", 0))
    sync = message(b"S")
    with RawClient("127.0.0.1", proxy.port) as client:
        for chunk in (
            startup_packet({"user": "twinkly", "database": "app"}),
            parse + bind + describe + execute + sync,
        ):
            for i in range(len(chunk)):
                client.send(chunk[i : i + 1])
                time.sleep(0.001)
            if chunk[:1] != b"P":
                while client.read_message()[0] != b"Z":
                    pass
        replies = client.messages_until_ready()
    assert [t for t, _ in replies] == [b"1", b"2", b"T", b"D", b"C", b"Z"]
    assert replies[3][1].endswith(b"42")

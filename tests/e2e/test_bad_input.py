"""Hostile or broken peers: malformed messages, bad start-up packets, clients that vanish,
backends that cannot be reached. Each is refused the way PostgreSQL would refuse it, and
nobody else notices."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator

import psycopg
import pytest
from pgwire import (
    PROTOCOL_3_0,
    RawClient,
    error_fields,
    free_port,
    split_messages,
    startup_packet,
)

pytestmark = pytest.mark.backends


@pytest.fixture
def bystander(proxy) -> Iterator[psycopg.Connection]:
    """Another live session through the same proxy, which must not notice anything."""
    with psycopg.connect(proxy.dsn(application_name="twinkly-e2e-bystander")) as conn:
        conn.execute("select 1")
        conn.commit()
        yield conn
        assert conn.execute("select 'still here'").fetchone() == ("still here",)
        conn.commit()


def sessions(dsn: str, application_name: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "select pid, state from pg_stat_activity where application_name = %s",
            (application_name,),
        ).fetchall()


def wait_until_gone(proxy, application_name: str, timeout: float = 5.0) -> None:
    """Both backend connections of a session are closed (each server has no session left)."""
    deadline = time.monotonic() + timeout
    while True:
        left = {
            "truth": sessions(proxy.truth_dsn, application_name),
            "target": sessions(proxy.target_dsn, application_name),
        }
        if not any(left.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert left == {"truth": [], "target": []}


def errors_in(data: bytes) -> list[dict[str, str]]:
    messages = list(split_messages(data))
    assert all(t == b"E" for t, _ in messages), f"expected only ErrorResponses: {messages}"
    return [error_fields(payload) for _, payload in messages]


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"Q\x00\x00\x00\x02", id="length-2"),
        pytest.param(b"P\x00\x00\x00\x00", id="length-0"),
        pytest.param(b"Q\x7f\xff\xff\xff", id="length-2GB-no-body"),
        pytest.param(b"Q\xff\xff\xff\xff" + b"x" * 100, id="length-4GB"),
        pytest.param(b"y\x00\x00\x00\x04", id="unknown-type"),
    ],
)
def test_malformed_message_after_startup(proxy, bystander, garbage: bytes) -> None:
    application = "twinkly-e2e-malformed"
    with RawClient("127.0.0.1", proxy.port) as client:
        client.startup("twinkly", "app", application_name=application)
        assert client.simple_query("select 1")[-1][0] == b"Z"
        assert sessions(proxy.truth_dsn, application) and sessions(proxy.target_dsn, application)
        client.send(garbage)
        data = client.read_until_closed(timeout=5)  # closes, at once
    errors = errors_in(data)
    assert errors, "no ErrorResponse before the connection closed"
    assert errors[0]["C"] == "08P01"
    assert errors[0]["S"] == "FATAL"
    wait_until_gone(proxy, application)


@pytest.mark.parametrize(
    ("packet", "sqlstates"),
    [
        # An impossible length: PostgreSQL closes without a word, and so must Twinkly.
        pytest.param(struct.pack("!I", 0x7FFFFFFF), set(), id="2GB-header-only"),
        # 10,000 bytes after the length word is still a start-up packet (of protocol 0.0).
        pytest.param(struct.pack("!I", 10_004) + b"\x00" * 10_000, {"08P01", "0A000"}, id="10004"),
        pytest.param(struct.pack("!I", 10_005) + b"\x00" * 10_001, set(), id="10005-bytes"),
        pytest.param(struct.pack("!I", 1_000_000) + b"\x00" * 50_000, set(), id="1MB"),
        pytest.param(struct.pack("!I", 3), set(), id="length-3"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", set(), id="http"),
        pytest.param(b"X\x00\x00\x00\x04", set(), id="terminate-first"),
        pytest.param(
            startup_packet({"user": "twinkly"}, code=2 << 16), {"08P01", "0A000"}, id="protocol-2"
        ),
        pytest.param(startup_packet({"database": "app"}), {"08P01", "28000"}, id="no-user"),
        pytest.param(
            struct.pack("!II", 17, PROTOCOL_3_0) + b"user\x00twinkly", {"08P01"}, id="unterminated"
        ),
    ],
)
def test_bad_startup_packet(proxy, bystander, packet: bytes, sqlstates: set[str]) -> None:
    """Each packet gets what PostgreSQL itself gives (checked against the truth server
    in the same test): a FATAL error of the same class, or a close without a word."""
    data, reset = reply_to(proxy.port, packet)
    direct, _ = reply_to(proxy.truth.port, packet)
    errors, server_errors = errors_in(data), errors_in(direct)
    if not sqlstates:
        assert (server_errors, direct) == ([], b""), "the server closes without a word"
        assert data == b"", "Twinkly closes without a word too"
        return
    # The server says why (a protocol-2 client is answered in protocol 2's own format).
    assert direct and (not server_errors or server_errors[0]["C"] in sqlstates)
    if reset and not errors and len(packet) > 1000:
        return  # refused, but the reset overtook the error message
    assert errors, "closed without saying why"
    assert errors[0]["C"] in sqlstates
    assert errors[0]["S"] == "FATAL"


def reply_to(port: int, packet: bytes) -> tuple[bytes, bool]:
    """Everything a server (or Twinkly) sends back to ``packet`` before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        started = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(packet)  # the peer may close before we finish: fine
        data, reset = b"", False
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            reset = True  # closed with our bytes unread: the kernel may drop its reply
        assert time.monotonic() - started < 5, "waited for the rest of the packet"
    return data, reset


@pytest.mark.parametrize("state", ["idle", "in-transaction"])
def test_client_vanishing_closes_both_backends(proxy, bystander, both_equal, state: str) -> None:
    application = f"twinkly-e2e-vanish-{state}"
    with psycopg.connect(proxy.dsn(), autocommit=True) as setup:
        setup.execute("drop table if exists vanish_t")
        setup.execute("create table vanish_t (id int primary key, v text)")
        setup.execute("insert into vanish_t values (1, 'before')")
    client = RawClient("127.0.0.1", proxy.port)
    client.startup("twinkly", "app", application_name=application)
    client.simple_query("select 1")
    if state == "in-transaction":
        replies = client.simple_query("begin; update vanish_t set v = 'locked' where id = 1")
        assert replies[-1] == (b"Z", b"T")
    deadline = time.monotonic() + 5
    while not (sessions(proxy.truth_dsn, application) and sessions(proxy.target_dsn, application)):
        assert time.monotonic() < deadline, "the session never reached both servers"
        time.sleep(0.05)
    # Vanish: no Terminate message, and RST instead of FIN.
    client.abort()
    wait_until_gone(proxy, application)
    # Nothing the vanished client did in its transaction survives, and no lock is left.
    for dsn in (proxy.truth_dsn, proxy.target_dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("set lock_timeout = '2s'")
            conn.execute("update vanish_t set v = v where id = 1")
    assert both_equal("select * from vanish_t") == [(1, "before")]


@pytest.mark.parametrize("down", ["target", "truth"])
def test_unreachable_backend_is_named(proxy, bystander, start_proxy, down: str) -> None:
    label = f"twinkly-e2e-{down}-down"
    if down == "target":  # refused only when the target is required (else: degraded)
        broken = start_proxy(
            ready=False,
            target_port=free_port(),
            target_label=label,
            extra="comparison.require-target = true",
        )
    else:
        broken = start_proxy(ready=False, truth_port=free_port(), truth_label=label)
    broken.wait_listening()
    for _ in range(2):  # and again: a failed start-up leaves nothing behind
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(broken.dsn(), autocommit=True)
        assert time.monotonic() - started < 8
        assert label in str(caught.value)
    assert broken.process.poll() is None, "the broken proxy died"
    # The shared proxy, with both backends up, is unaffected.
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("when", ["after-startup", "after-ssl-request"])
def test_client_leaving_during_startup_leaves_no_backend(proxy, bystander, when: str) -> None:
    """Backends that finish logging in after their client left are closed at once."""
    application = f"twinkly-e2e-early-leaver-{when}"
    for _ in range(5):
        client = RawClient("127.0.0.1", proxy.port)
        if when == "after-ssl-request":
            client.send(struct.pack("!II", 8, 80877103))
            assert client.sock.recv(1) == b"N"
        client.send(startup_packet({"user": "twinkly", "database": "app",
                                    "application_name": application}))  # fmt: skip
        client.abort()
    time.sleep(0.5)  # let the backends finish their logins
    wait_until_gone(proxy, application)

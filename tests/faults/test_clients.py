"""Hostile and heavy clients: idle half-open connections, too many of them, malformed
input before and after login (hypothesis), hundreds of concurrent sessions."""

from __future__ import annotations

import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
from faultkit import events, fds, wait_for, wait_no_backends
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgwire import RawClient, error_fields, split_messages
from proxyproc import start_proxy_process

MALFORMED_PER_EXAMPLE = 250
EXAMPLES = 10  # x2 phases x 250 = 5,000 inputs


def served(proxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_idle_half_open_connections_are_closed_by_the_login_timeout(clean) -> None:
    """200 connections that never send a start-up packet: closed after
    client-login-timeout (2 s here); past max-startup-connections (250) they are refused."""
    before = fds(clean.pid)
    socks = [socket.create_connection(("127.0.0.1", clean.port)) for _ in range(200)]
    served(clean)  # the proxy serves meanwhile
    wait_for(lambda: fds(clean.pid) >= before + 200, 5, "the proxy to accept them")
    extra = [socket.create_connection(("127.0.0.1", clean.port)) for _ in range(60)]
    codes = []
    for sock in extra:  # refused at once (53300), or timed out like the others (57014)
        sock.settimeout(5)
        ((_type_byte, payload),) = split_messages(sock.recv(4096))
        codes.append(error_fields(payload)["C"])
    assert codes.count("53300") == 10, codes  # 200 + 60 - 250
    assert codes.count("57014") == 50, codes
    started = time.monotonic()
    for sock in socks:
        sock.settimeout(5)
        data = sock.recv(4096)  # the timeout's FATAL, then the close
        (message,) = split_messages(data)
        assert error_fields(message[1])["C"] == "57014"
        assert sock.recv(4096) == b""
    assert time.monotonic() - started < 4
    for sock in socks + extra:
        sock.close()
    served(clean)


# --- malformed input -------------------------------------------------------------------


def _length(n: int) -> bytes:
    return struct.pack("!I", n & 0xFFFFFFFF)


bad_startup = st.one_of(
    # A length below the smallest packet, or far beyond any start-up packet.
    st.tuples(st.integers(0, 7) | st.integers(10_001, 2**32 - 1), st.binary(max_size=40)).map(
        lambda t: _length(t[0]) + t[1]
    ),
    # A well-framed packet with an unknown protocol code.
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=40))
    .filter(lambda t: t[0] >> 16 not in (3,) and t[0] not in (80877102, 80877103, 80877104))
    .map(lambda t: _length(8 + len(t[1])) + struct.pack("!I", t[0]) + t[1]),
    # Protocol 3.0 with parameters that are not NUL-terminated pairs, or no user.
    st.binary(max_size=40)
    .filter(lambda b: not b.endswith(b"\x00\x00") and b"user" not in b)
    .map(lambda b: _length(8 + len(b)) + struct.pack("!I", 196608) + b),
)

bad_message = st.one_of(
    # A length below 4 (the length counts itself).
    st.tuples(st.sampled_from(b"QPBEDSHCXdcfpF"), st.integers(0, 3)).map(
        lambda t: bytes((t[0],)) + _length(t[1])
    ),
    # Longer than max-message-bytes (1 MiB here).
    st.tuples(st.sampled_from(b"QPBd"), st.integers(1_048_577, 2**31)).map(
        lambda t: bytes((t[0],)) + _length(t[1]) + b"x" * 16
    ),
    # A type byte no frontend message has.
    st.tuples(
        st.integers(0, 255).filter(lambda b: chr(b) not in "QPBEDSHCXdcfpF"),
        st.binary(max_size=32),
    ).map(lambda t: bytes((t[0],)) + _length(4 + len(t[1])) + t[1]),
    # A Query whose text is not NUL-terminated.
    st.binary(min_size=1, max_size=32)
    .filter(lambda b: b"\x00" not in b)
    .map(lambda b: b"Q" + _length(4 + len(b)) + b),
)


def _outcome(proxy_port: int, data: bytes, login: bool) -> str:
    """Send one malformed input; 'ok' when answered by 08P01 or a close."""
    client = RawClient("127.0.0.1", proxy_port, timeout=10)
    try:
        if login:
            client.startup("twinkly", "app", "twinkly-pw", application_name="faults-fuzz")
        client.send(data)
        client.sock.shutdown(socket.SHUT_WR)  # a truncated packet ends here: close
        answer = client.read_until_closed(timeout=10)
    except (ConnectionResetError, BrokenPipeError):
        return "ok"
    except TimeoutError:
        return f"no answer to {data[:40]!r}"
    finally:
        client.close()
    for type_byte, payload in split_messages(answer):
        if type_byte == b"E":
            code = error_fields(payload).get("C")
            return "ok" if code == "08P01" else f"{code} for {data[:40]!r}"
    return "ok"  # closed without an error


def _fuzz(proxy, inputs: list[bytes], login: bool, seen: list[int]) -> None:
    seen.append(len(inputs))
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda d: _outcome(proxy.port, d, login), inputs))
    bad = [o for o in outcomes if o != "ok"]
    assert not bad, bad[:5]
    served(proxy)


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_malformed_input_before_login(clean) -> None:
    @FUZZ
    @given(st.lists(bad_startup, min_size=MALFORMED_PER_EXAMPLE, max_size=MALFORMED_PER_EXAMPLE))
    def fuzz(inputs: list[bytes]) -> None:
        _fuzz(clean, inputs, login=False, seen=seen)

    seen: list[int] = []
    started = time.monotonic()
    fuzz()
    assert sum(seen) >= EXAMPLES * MALFORMED_PER_EXAMPLE, seen
    assert time.monotonic() - started < 60


def test_malformed_input_after_login(clean, servers) -> None:
    @FUZZ
    @given(st.lists(bad_message, min_size=MALFORMED_PER_EXAMPLE, max_size=MALFORMED_PER_EXAMPLE))
    def fuzz(inputs: list[bytes]) -> None:
        _fuzz(clean, inputs, login=True, seen=seen)

    seen: list[int] = []
    started = time.monotonic()
    fuzz()
    assert sum(seen) >= EXAMPLES * MALFORMED_PER_EXAMPLE, seen
    assert time.monotonic() - started < 120
    wait_no_backends(servers)


# --- load ----------------------------------------------------------------------------------


def test_300_concurrent_sessions_of_20_statements(throwaway, tmp_path) -> None:
    proxy = start_proxy_process(
        *throwaway,
        tmp_path / "load",
        extra="proxy { max-client-connections = 400, max-startup-connections = 320 }\n",
    )
    try:
        with psycopg.connect(throwaway[0].dsn(sslmode="disable"), autocommit=True) as conn:
            conn.execute("drop table if exists load; create table load (id int, v int)")
        with psycopg.connect(throwaway[1].dsn(sslmode="disable"), autocommit=True) as conn:
            conn.execute("drop table if exists load; create table load (id int, v int)")

        def session(n: int) -> int:
            with psycopg.connect(proxy.dsn(connect_timeout="60"), autocommit=True) as conn:
                done = 0
                for i in range(10):
                    conn.execute("insert into load values (%s, %s)", (n, i))
                    conn.execute("select count(*) from load where id = %s", (n,)).fetchone()
                    done += 2
                return done

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=300) as pool:
            done = sum(pool.map(session, range(300)))
        elapsed = time.monotonic() - started
        assert done == 6000
        assert elapsed < 90, elapsed
        for server in throwaway:
            with psycopg.connect(server.dsn(sslmode="disable"), autocommit=True) as conn:
                assert conn.execute("select count(*) from load").fetchone() == (3000,)
        assert not [e for e in events(proxy) if e["kind"] == "error_divergence"]
        wait_no_backends(throwaway)
    finally:
        proxy.stop()
    assert not proxy.bad_log_lines(), proxy.bad_log_lines()[:5]

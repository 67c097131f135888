"""Logging in, both ways: clients to Twinkly (trust, password, md5, SCRAM; TLS), and
Twinkly to each backend with that backend's own credentials (trust, cleartext, md5,
SCRAM, TLS with certificate verification)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import asyncpg
import pg8000.native
import psycopg
import pytest

pytestmark = pytest.mark.backends

ALICE = 'proxy.auth { method = %s, users = [{ name = alice, password = "wonder land" }] }'


def backend_user(key: str, user: str, password: str, extra: str = "") -> str:
    return f'proxy.{key} {{ user = {user}, password = "{password}" {extra} }}'


def listening(proxy) -> None:
    """For proxies whose logins are meant to fail: wait only for the port."""
    deadline = time.monotonic() + 15
    while not proxy.accepts():
        assert time.monotonic() < deadline, proxy.log_text()
        time.sleep(0.05)


def through(proxy, **extra: str) -> list[tuple]:
    with psycopg.connect(proxy.dsn(**extra), autocommit=True) as conn:
        return conn.execute("select current_user, 1 + 1").fetchall()


def backend_sessions(dsn: str, application_name: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "select a.usename, coalesce(s.ssl, false) from pg_stat_activity a"
            " left join pg_stat_ssl s using (pid) where a.application_name = %s",
            (application_name,),
        ).fetchall()


@pytest.mark.parametrize(
    ("truth_user", "target_user"),
    [
        (("tw_md5", "md5-pw"), ("tw_clear", "clear-pw")),
        (("tw_clear", "clear-pw"), ("tw_trust", "")),
        (("tw_trust", ""), ("tw_md5", "md5-pw")),
    ],
)
def test_each_backend_gets_its_own_credentials(start_proxy, truth_user, target_user) -> None:
    extra = "\n".join(
        [backend_user("postgresql", *truth_user), backend_user("yugabytedb", *target_user)]
    )
    proxy = start_proxy(extra=extra)
    application = f"twinkly-auth-{truth_user[0]}"
    with psycopg.connect(proxy.dsn(application_name=application), autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == (truth_user[0],)
        assert backend_sessions(proxy.truth_dsn, application) == [(truth_user[0], False)]
        assert backend_sessions(proxy.target_dsn, application) == [(target_user[0], False)]


def test_scram_and_tls_to_the_target(start_proxy, sandbox) -> None:
    extra = backend_user(
        "yugabytedb",
        "tw_tls",
        "tls-pw",
        f', tls = verify-full, ca-file = "{sandbox.ca_file}"',
    )
    proxy = start_proxy(extra=extra)
    application = "twinkly-target-tls"
    with psycopg.connect(proxy.dsn(application_name=application), autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == ("twinkly",)
        assert backend_sessions(proxy.target_dsn, application) == [("tw_tls", True)]
        assert backend_sessions(proxy.truth_dsn, application) == [("twinkly", False)]


def test_tls_required_by_the_backend_but_disabled_in_twinkly_is_reported(start_proxy) -> None:
    proxy = start_proxy(ready=False, extra=backend_user("yugabytedb", "tw_tls", "tls-pw"))
    listening(proxy)
    with pytest.raises(psycopg.OperationalError) as caught:
        through(proxy)
    assert "pg18" in str(caught.value)
    assert "tw_tls" in str(caught.value)


def test_wrong_backend_password_names_the_backend(start_proxy) -> None:
    proxy = start_proxy(ready=False, extra=backend_user("yugabytedb", "tw_md5", "not-it"))
    listening(proxy)
    with pytest.raises(psycopg.OperationalError) as caught:
        through(proxy)
    message = str(caught.value)
    assert "pg18" in message
    assert 'password authentication failed for user "tw_md5"' in message


@pytest.mark.parametrize("method", ["scram-sha-256", "md5", "password"])
def test_client_login_methods_with_libpq(start_proxy, method) -> None:
    proxy = start_proxy(ready=False, extra=ALICE % method)
    listening(proxy)
    assert through(proxy, user="alice", password="'wonder land'") == [("twinkly", 2)]
    with pytest.raises(psycopg.OperationalError) as caught:
        through(proxy, user="alice", password="wrong")
    assert 'authentication failed for user "alice"' in str(caught.value)
    with pytest.raises(psycopg.OperationalError):
        through(proxy, user="mallory", password="'wonder land'")


def test_client_scram_with_asyncpg_and_pg8000(start_proxy) -> None:
    proxy = start_proxy(ready=False, extra=ALICE % "scram-sha-256")
    listening(proxy)

    async def with_asyncpg() -> int:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=proxy.port,
            user="alice",
            password="wonder land",
            database="app",
            ssl=False,
        )
        try:
            return await conn.fetchval("select 40 + 2")
        finally:
            await conn.close()

    assert asyncio.run(with_asyncpg()) == 42
    conn = pg8000.native.Connection(
        "alice", host="127.0.0.1", port=proxy.port, password="wonder land", database="app"
    )
    try:
        assert conn.run("select 6 * 7") == [[42]]
    finally:
        conn.close()
    with pytest.raises(pg8000.native.DatabaseError):
        pg8000.native.Connection(
            "alice", host="127.0.0.1", port=proxy.port, password="nope", database="app"
        )


def test_client_tls(start_proxy, sandbox) -> None:
    root = sandbox.root
    extra = (
        f'proxy.tls {{ cert-file = "{root / "server.pem"}", key-file = "{root / "server.key"}" }}'
    )
    proxy = start_proxy(ready=False, extra=extra + "\n" + ALICE % "scram-sha-256")
    listening(proxy)
    dsn = proxy.dsn(
        user="alice",
        password="'wonder land'",
        sslmode="verify-full",
        sslrootcert=str(sandbox.ca_file),
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)
    # Without a certificate configured, Twinkly answers SSLRequest with N.
    plain = start_proxy("plain")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(plain.dsn(sslmode="require"))
    with psycopg.connect(plain.dsn(sslmode="prefer"), autocommit=True) as conn:
        assert not conn.pgconn.ssl_in_use
    # The plain one never loaded pyOpenSSL or cryptography (about 11 MB resident); the
    # TLS one did, and each says so at start-up.
    assert "TLS stack not loaded (no TLS configured)" in plain.log_text()
    assert "TLS stack loaded" in proxy.log_text()
    mapped = Path(f"/proc/{plain.pid}/maps").read_text()
    assert "cryptography" not in mapped and "OpenSSL" not in mapped
    assert "cryptography" in Path(f"/proc/{proxy.pid}/maps").read_text()


def test_unreachable_target_is_named_and_does_not_hang(start_proxy) -> None:
    """With comparison.require-target the client is refused, naming the target (without
    it the session runs on the truth alone: tests/faults/test_outage.py)."""
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    proxy = start_proxy(
        ready=False,
        target_port=closed_port,
        target_label="lost-target",
        extra="comparison.require-target = true",
    )
    listening(proxy)
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as caught:
        through(proxy)
    assert "lost-target" in str(caught.value)
    assert time.monotonic() - started < 10

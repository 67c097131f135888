"""The sandbox really provides two servers with one role per backend auth method, and pgbouncer."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.pgbouncer import run_pgbouncer, stop_pgbouncer
from devtools.sandbox import USERS, Sandbox, Server

psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.backends


def _alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (pg_ctl's postmaster is reparented to init)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox()
    t0 = time.monotonic()
    box.start()
    print(f"sandbox start took {time.monotonic() - t0:.2f}s")
    assert box.servers is not None
    pids = [int((s.datadir / "postmaster.pid").read_text().split()[0]) for s in box.servers]
    root = box.root
    assert all(_alive(p) for p in pids)
    yield box
    box.stop()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), "postmaster still running after stop()"
    assert root is not None and not root.exists()


@pytest.fixture(scope="module")
def servers(sandbox: Sandbox) -> tuple[Server, Server]:
    assert sandbox.servers is not None
    return sandbox.servers


def _connect(server: Server, user: str, **extra: str) -> psycopg.Connection:
    return psycopg.connect(server.dsn(user, USERS[user] or None, **extra), connect_timeout=10)


def test_layout(servers: tuple[Server, Server]) -> None:
    pg15, pg18 = servers
    assert (pg15.label, pg15.major, pg18.label, pg18.major) == ("pg15", 15, "pg18", 18)
    assert pg15.port != pg18.port
    for s in servers:
        assert s.host == "127.0.0.1"
        assert s.binary("psql").exists() and s.binary("pgbench").exists()
        assert s.ca_file.name == "ca.pem" and s.ca_file.exists()
        assert (s.socket_dir / f".s.PGSQL.{s.port}").exists()
        key = s.ca_file.parent / "server.key"
        assert key.stat().st_mode & 0o777 == 0o600
        with pytest.raises(FileNotFoundError):
            s.binary("no-such-program")


@pytest.mark.parametrize("label", ["pg15", "pg18"])
@pytest.mark.parametrize("user", sorted(USERS))
def test_each_role_connects(servers: tuple[Server, Server], label: str, user: str) -> None:
    server = next(s for s in servers if s.label == label)
    extra = (
        {"sslmode": "verify-full", "sslrootcert": str(server.ca_file)} if user == "tw_tls" else {}
    )
    with _connect(server, user, **extra) as conn:
        version = conn.execute("select version()").fetchone()[0]
        assert version.startswith(f"PostgreSQL {server.major}.")
        assert conn.execute("select current_user").fetchone()[0] == user
        if user == "tw_tls":
            assert conn.info.pgconn.ssl_in_use


@pytest.mark.parametrize("label", ["pg15", "pg18"])
def test_auth_methods(servers: tuple[Server, Server], label: str) -> None:
    server = next(s for s in servers if s.label == label)
    with pytest.raises(psycopg.OperationalError, match="tw_tls"):
        _connect(server, "tw_tls", sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(server.dsn("twinkly", "wrong", sslmode="disable"))
    with _connect(server, "twinkly", sslmode="disable") as conn:
        rows = dict(
            conn.execute(
                "select rolname, left(rolpassword, 6) from pg_authid where rolname like 'tw%'"
            ).fetchall()
        )
        # md5 role really holds an md5 hash, the others SCRAM; the trust role has none
        assert rows["tw_md5"].startswith("md5")
        assert rows["twinkly"] == rows["tw_clear"] == rows["tw_tls"] == "SCRAM-"
        assert rows["tw_trust"] is None
        assert not conn.info.pgconn.ssl_in_use
        ssl_on = conn.execute("show ssl").fetchone()[0]
        assert ssl_on == "on"


def test_reset_database(servers: tuple[Server, Server]) -> None:
    for server in servers:
        with _connect(server, "tw_md5", sslmode="disable") as conn:
            conn.execute("create table leftover (x int)")
            conn.commit()
        idle = _connect(server, "twinkly")  # reset must kick this session out
        server.reset_database()
        with pytest.raises(psycopg.OperationalError):
            idle.execute("select 1")
        idle.close()
        with _connect(server, "tw_clear") as conn:
            assert conn.execute("select to_regclass('leftover')").fetchone()[0] is None
            conn.execute("create table fresh (x int)")  # public schema writable by everyone


def test_pgbouncer(servers: tuple[Server, Server], sandbox: Sandbox) -> None:
    pg15 = servers[0]
    assert sandbox.root is not None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_pgbouncer(pg15, port, sandbox.root / "pgbouncer")
    try:
        if os.geteuid() == 0:
            assert Path(f"/proc/{proc.pid}/status").read_text().count("\nUid:\t0") == 0
        dsn = f"host=127.0.0.1 port={port} user=twinkly password=twinkly-pw dbname=app"
        with psycopg.connect(dsn, connect_timeout=10, prepare_threshold=None) as conn:
            assert conn.execute("select version()").fetchone()[0].startswith("PostgreSQL 15.")
            assert conn.execute("show port").fetchone()[0] == str(pg15.port)
    finally:
        stop_pgbouncer(proc)
    assert proc.returncode is not None

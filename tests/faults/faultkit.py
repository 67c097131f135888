"""Helpers of the fault-injection suite (also used by scripts/soak.sh's driver)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from pgwire import RawClient, query_message

from devtools import sandbox as sb
from devtools.sandbox import Sandbox, Server

CHECKER_APP = "faults-check"
FAULT_PROXY_CONFIG = """
proxy {
  client-login-timeout = 2s
  max-client-connections = 400
  max-startup-connections = 250
  max-message-bytes = 1048576
  target-retry-initial = 500ms
  target-retry-max = 2s
}
"""


def admin_dsn(server: Server) -> str:
    return server.dsn(sslmode="disable", application_name=CHECKER_APP)


def client_backends(server: Server) -> list[tuple]:
    """Client connections to ``server`` other than the checker's own."""
    with psycopg.connect(admin_dsn(server), autocommit=True) as conn:
        return conn.execute(
            "select pid, application_name, state, left(query, 60) from pg_stat_activity"
            " where backend_type = 'client backend' and pid <> pg_backend_pid()"
            " and application_name is distinct from %s",
            (CHECKER_APP,),
        ).fetchall()


def backends_named(server: Server, application: str) -> list[tuple]:
    return [row for row in client_backends(server) if row[1] == application]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def kill_mid_stream(port: int, application: str) -> None:
    """A client that vanishes 1 MB into a 3M-row answer the truth is still streaming."""
    client = RawClient("127.0.0.1", port)
    client.startup("twinkly", "app", "twinkly-pw", application_name=application)
    client.send(query_message("select g, repeat('x', 40) from generate_series(1, 3000000) g"))
    got = 0
    while got < 1 << 20:
        got += len(client.sock.recv(65536))
    client.abort()


def wait_no_backends(servers: tuple[Server, ...], timeout: float = 10.0) -> None:
    last: dict[str, list] = {}

    def none_left() -> bool:
        for server in servers:
            last[server.label] = client_backends(server)
        return not any(last.values())

    try:
        wait_for(none_left, timeout, "backend connections to close")
    except AssertionError:
        raise AssertionError(f"backend connections left: {last}") from None


def terminate(server: Server, application: str) -> int:
    """pg_terminate_backend of every connection with that application_name."""
    with psycopg.connect(admin_dsn(server), autocommit=True) as conn:
        rows = conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where application_name = %s and pid <> pg_backend_pid()",
            (application,),
        ).fetchall()
    return len(rows)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Baseline:
    fds: int
    rss_mb: float

    @classmethod
    def take(cls, proxy: Any) -> Baseline:
        # Warm up first: imports, the parse cache, the first sessions' allocations.
        for _ in range(5):
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                conn.execute("select 1").fetchone()
        time.sleep(0.3)
        return cls(fds(proxy.pid), rss_mb(proxy.pid))


def check_clean(
    proxy: Any,
    servers: tuple[Server, ...],
    baseline: Baseline,
    fd_slack: int = 6,
    rss_slack_mb: float = 60.0,
) -> None:
    """After a case: no backend connection on either server, fds and RSS near baseline."""
    wait_no_backends(servers)
    try:
        wait_for(lambda: fds(proxy.pid) <= baseline.fds + fd_slack, 10.0, "fds to be released")
    except AssertionError:
        listing = sorted(
            os.readlink(f"/proc/{proxy.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proxy.pid}/fd")
        )
        raise AssertionError(
            f"proxy fds {fds(proxy.pid)} > baseline {baseline.fds} + {fd_slack}: {listing}"
        ) from None
    rss = rss_mb(proxy.pid)
    assert rss <= baseline.rss_mb + rss_slack_mb, (
        f"RSS {rss:.0f} MB, baseline {baseline.rss_mb:.0f}"
    )


def events(proxy: Any) -> list[dict]:
    path = Path(proxy.workdir) / "reports" / "twinkly-events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Blackhole:
    """A listening socket that never answers: connects succeed, start-up never ends."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


# --- a throwaway pair of servers ---------------------------------------------------------


def make_throwaway_pair(box: Sandbox) -> tuple[Server, Server]:
    assert box.root is not None
    uid, gid = sb._pg_ids()
    bindirs = sb.ensure_binaries()
    servers = []
    taken: set[int] = set()
    for major, wanted in ((15, 57515), (18, 57518)):
        label = f"faults-pg{major}"
        port = sb._pick_port(label, wanted, taken)
        taken.add(port)
        sock = box.root / label
        servers.append(
            sb.Server(label, major, sb.HOST, port, bindirs[major], sock / "data", sock, box.ca_file)
        )
    original = sb._conf
    sb._conf = lambda *a: original(*a) + "max_connections = 400\n"  # type: ignore[assignment]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(sb._create_server, s, uid, gid, box.root) for s in servers]:
                future.result()
    finally:
        sb._conf = original  # type: ignore[assignment]
    return servers[0], servers[1]


def stop_server(server: Server, mode: str = "fast") -> None:
    if (server.datadir / "postmaster.pid").exists():
        sb._pg_ctl(server, "-m", mode, "-w", "-t", "60", "stop")


def start_server(server: Server) -> None:
    log_file = server.socket_dir / "postgresql.log"
    sb._pg_ctl(server, "-l", str(log_file), "-w", "-t", "60", "start")

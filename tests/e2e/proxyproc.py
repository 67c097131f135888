"""Twinkly as a subprocess, exactly as in production: ``twistd -n twinkly --config FILE``.

Used by the fixtures in tests/conftest.py and by tests that need a proxy of their own
(another configuration, a backend that is down, a SIGTERM).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgwire import free_port

from devtools.sandbox import Server

REPO_ROOT = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")
USER, PASSWORD, DATABASE = "twinkly", "twinkly-pw", "app"
# twistd re-raises the signal that stopped it once the reactor is down.
CLEAN_EXIT = (0, -signal.SIGTERM)
BAD_LOG_LINES = ("Unhandled error", "Unhandled Error", "Traceback")


def _hocon(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _backend_block(
    server: Server, label: str, port: int | None = None, unix_socket: bool = False
) -> str:
    host = str(server.socket_dir) if unix_socket else server.host
    return (
        f"{{ label = {_hocon(label)}, host = {_hocon(host)},"
        f" port = {port or server.port}, user = {_hocon(USER)},"
        f" password = {_hocon(PASSWORD)}, database = {_hocon(DATABASE)},"
        " tls = disable, connect-timeout = 5s }"
    )


def proxy_config(
    port: int,
    truth: Server,
    target: Server,
    *,
    shutdown_timeout: str = "3s",
    truth_label: str = "pg15",
    target_label: str = "pg18",
    truth_port: int | None = None,
    target_port: int | None = None,
    unix_sockets: bool = False,
    extra: str = "",
) -> str:
    """HOCON text for a proxy: proxy.postgresql is the truth, proxy.yugabytedb the target."""
    return "\n".join(
        [
            "proxy {",
            '  listen-address = "127.0.0.1"',
            f"  listen-port = {port}",
            f"  shutdown-timeout = {shutdown_timeout}",
            "  auth { method = trust }",
            f"  postgresql {_backend_block(truth, truth_label, truth_port, unix_sockets)}",
            f"  yugabytedb {_backend_block(target, target_label, target_port, unix_sockets)}",
            "}",
            'comparison { enabled = true, source-of-truth = "postgresql" }',
            # Tests read the events file while the proxy runs: no batching delay.
            "reporting.flush-interval = 20ms",
            extra,
            "",
        ]
    )


@dataclass
class ProxyProcess:
    """One ``twistd -n twinkly`` subprocess and what tests need to reach it."""

    port: int
    workdir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen
    truth: Server
    target: Server
    _log_file: Any = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def dsn(self, **extra: str) -> str:
        """libpq connection string through the proxy."""
        parts = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "user": USER,
            "password": PASSWORD,
            "dbname": DATABASE,
            "sslmode": "disable",
            "connect_timeout": "10",
        }
        parts.update(extra)
        return " ".join(f"{k}={v}" for k, v in parts.items())

    @property
    def truth_dsn(self) -> str:
        return self.truth.dsn(sslmode="disable")

    @property
    def target_dsn(self) -> str:
        return self.target.dsn(sslmode="disable")

    def log_text(self, start: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", "replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def bad_log_lines(self, start: int = 0) -> list[str]:
        return [
            line
            for line in self.log_text(start).splitlines()
            if any(bad in line for bad in BAD_LOG_LINES)
        ]

    def accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Until the port accepts connections (for proxies whose logins must fail)."""
        deadline = time.monotonic() + timeout
        while not self.accepts():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"twinkly exited with {self.process.returncode}:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"twinkly not listening after {timeout}s:\n{self.log_text()}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the port accepts and a real login through both backends works."""
        import psycopg

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"twinkly exited with {self.process.returncode}:\n{self.log_text()}"
                )
            if self.accepts():
                try:
                    with psycopg.connect(self.dsn(), autocommit=True) as conn:
                        conn.execute("select 1").fetchone()
                    return
                except psycopg.Error as e:
                    last = e
            time.sleep(0.05)
        raise RuntimeError(f"twinkly not ready after {timeout}s ({last}):\n{self.log_text()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; a proxy that does not exit is killed and reported."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                raise RuntimeError(
                    f"twinkly ignored SIGTERM for {timeout}s:\n{self.log_text()}"
                ) from None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.process.returncode


def start_proxy_process(
    truth: Server, target: Server, workdir: Path, ready: bool = True, **config: Any
) -> ProxyProcess:
    """Write a config into ``workdir`` and start Twinkly on a free port."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config_path = workdir / "twinkly.conf"
    config_path.write_text(proxy_config(port, truth, target, **config))
    log_path = workdir / "twinkly.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by ProxyProcess.stop
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [str(TWISTD), "-n", "--pidfile=", "twinkly", "--config", str(config_path)]
    process = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    proxy = ProxyProcess(port, workdir, config_path, log_path, process, truth, target, log_file)
    if ready:
        try:
            proxy.wait_ready()
        except BaseException:
            proxy.stop()
            raise
    return proxy


def query_all(dsn: str, sql: str, params: Any = None) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def same_as_truth(proxy: ProxyProcess, oracle_dsn: str, scenario: Any, **connect: Any) -> Any:
    """Run one client scenario through the proxy and directly on the truth's oracle
    database; the answers must be equal. Returns the proxy's."""
    import psycopg

    with psycopg.connect(proxy.dsn(), **connect) as conn:
        got = scenario(conn)
    with psycopg.connect(oracle_dsn, **connect) as conn:
        want = scenario(conn)
    assert got == want
    return got


def assert_cancels_a_sleep(conn: Any, cancel: Any, delay: float = 0.5) -> None:
    """``cancel()``, called ``delay`` seconds into ``select pg_sleep(30)`` on the psycopg
    connection ``conn``, ends it with QueryCanceled within a few seconds."""
    import threading

    import psycopg
    import pytest

    timer = threading.Timer(delay, cancel)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(30)")
    finally:
        timer.cancel()
    assert time.monotonic() - started < 5

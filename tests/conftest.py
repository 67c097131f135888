"""Fixtures for the end-to-end tests: two real PostgreSQL servers and Twinkly as a subprocess.

The proxy runs exactly as in production (``twistd -n twinkly --config FILE``), so these tests
see what a user sees: real drivers, real sockets, real servers. Every proxy started here has
its log checked for unhandled errors, and a failing test prints the log lines it produced.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.sandbox import Sandbox, Server

E2E_DIR = Path(__file__).resolve().parent / "e2e"
for helpers in (E2E_DIR, E2E_DIR.parent):  # helper modules of the tests, importable by name
    if str(helpers) not in sys.path:
        sys.path.insert(0, str(helpers))

from pgwire import free_port  # noqa: E402 - needs the path above
from proxyproc import (  # noqa: E402
    BAD_LOG_LINES,
    CLEAN_EXIT,
    ProxyProcess,
    query_all,
    start_proxy_process,
)

__all__ = ["BAD_LOG_LINES", "CLEAN_EXIT", "free_port"]
# Tests may ``from conftest import ...``: with --import-mode=importlib this module is not
# otherwise importable under that name.
sys.modules.setdefault("conftest", sys.modules[__name__])

# --- pytest wiring ---------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    # TWINKLY_E2E_KEEP=1 keeps the servers' directories (and their logs) for a post-mortem.
    box = Sandbox(keep=os.environ.get("TWINKLY_E2E_KEEP") == "1")
    box.start()  # no skip: if the servers cannot start, every e2e test errors
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="session")
def servers(sandbox: Sandbox) -> tuple[Server, Server]:
    assert sandbox.servers is not None
    return sandbox.servers


@pytest.fixture(scope="session")
def proxy(
    servers: tuple[Server, Server], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """The shared proxy: pg15 is the source of truth, pg18 the target."""
    pg15, pg18 = servers
    workdir = tmp_path_factory.mktemp("shared-proxy")
    proc = start_proxy_process(pg15, pg18, workdir)
    yield proc
    code = proc.stop()
    bad = proc.bad_log_lines()
    log = proc.log_text()
    if bad or code not in CLEAN_EXIT:
        print(f"--- twinkly log ({proc.log_path}) ---\n{log}")
    assert not bad, f"twinkly logged unhandled errors: {bad[:5]}"
    assert code in CLEAN_EXIT, f"twinkly exited with {code}"


@pytest.fixture
def start_proxy(
    servers: tuple[Server, Server], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ProxyProcess]]:
    """Factory for extra proxies (own config); each is stopped and its log checked."""
    started: list[ProxyProcess] = []

    def start(name: str = "extra", ready: bool = True, **config: Any) -> ProxyProcess:
        pg15, pg18 = servers
        proc = start_proxy_process(pg15, pg18, tmp_path / name, ready=ready, **config)
        started.append(proc)
        return proc

    yield start
    problems = []
    report = getattr(request.node, "rep_call", None)
    for proc in started:
        try:
            proc.stop()
        except RuntimeError as e:  # ignored SIGTERM: killed, and reported
            problems.append(str(e))
        if report is not None and report.failed:
            print(f"--- log of proxy on port {proc.port} ---\n{proc.log_text()}")
        bad = proc.bad_log_lines()
        if bad:
            problems.append(f"proxy on port {proc.port} logged: {bad[:5]}")
    assert not problems, "\n".join(problems)


@pytest.fixture(autouse=True)
def _proxy_log_watch(request: pytest.FixtureRequest) -> Iterator[None]:
    """For tests using the shared proxy: show its new log lines on failure and fail the
    test if the proxy logged an unhandled error while it ran."""
    if "proxy" not in request.fixturenames:
        yield
        return
    proc: ProxyProcess = request.getfixturevalue("proxy")
    start = proc.log_size()
    yield
    time.sleep(0.05)  # let the proxy log what the test's last disconnects caused
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- twinkly log during this test ---\n{proc.log_text(start)}")
    bad = proc.bad_log_lines(start)
    assert not bad, f"twinkly logged unhandled errors during this test: {bad[:5]}"
    assert proc.process.poll() is None, "the shared twinkly proxy died"


@pytest.fixture(scope="session")
def both_equal(servers: tuple[Server, Server]) -> Callable[..., list[tuple]]:
    """Run one query directly on both servers, assert identical results, return them.

    The client only waits for the truth, so the target may still be finishing the last
    statements: a difference is retried for up to ``settle`` seconds before it fails.
    """
    pg15, pg18 = servers

    def check(sql: str, params: Any = None, settle: float = 5.0) -> list[tuple]:
        deadline = time.monotonic() + settle
        while True:
            truth = query_all(pg15.dsn(sslmode="disable"), sql, params)
            target = query_all(pg18.dsn(sslmode="disable"), sql, params)
            if truth == target or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert truth == target, f"pg15 and pg18 differ for {sql!r}:\n{truth}\n{target}"
        return truth

    return check


@pytest.fixture(scope="module")
def fresh_db(servers: tuple[Server, Server]) -> None:
    """A clean twinkly database on both servers for the module (kicks out its sessions)."""
    for server in servers:
        server.reset_database()


@pytest.fixture(scope="session")
def oracle_dsn(servers: tuple[Server, Server]) -> str:
    """A database of its own on the truth, where tests run the same scenario directly:
    what the proxy answers must equal what the truth answers without it."""
    pg15 = servers[0]
    pg15.reset_database("twinkly_oracle")
    return pg15.dsn(dbname="twinkly_oracle", sslmode="disable")

"""Fixtures of the fault-injection suite: a proxy of its own on the shared servers, a
throwaway pair of servers (for stopping the target and for hundreds of sessions), and the
check after every case: no backend connection left, fds and RSS back near baseline."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

FAULTS_DIR = Path(__file__).resolve().parent
if str(FAULTS_DIR) not in sys.path:
    sys.path.insert(0, str(FAULTS_DIR))

from faultkit import (  # noqa: E402
    FAULT_PROXY_CONFIG,
    Baseline,
    check_clean,
    make_throwaway_pair,
    stop_server,
)
from proxyproc import BAD_LOG_LINES, CLEAN_EXIT, ProxyProcess, start_proxy_process  # noqa: E402

from devtools.sandbox import Sandbox, Server  # noqa: E402

assert BAD_LOG_LINES


@pytest.fixture(scope="session")
def fproxy(
    servers: tuple[Server, Server], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """The faults suite's proxy on the shared servers, with tight limits."""
    pg15, pg18 = servers
    proc = start_proxy_process(
        pg15, pg18, tmp_path_factory.mktemp("faults-proxy"), extra=FAULT_PROXY_CONFIG
    )
    yield proc
    code = proc.stop()
    bad = proc.bad_log_lines()
    if bad or code not in CLEAN_EXIT:
        print(f"--- twinkly log ({proc.log_path}) ---\n{proc.log_text()}")
    assert not bad, f"twinkly logged unhandled errors: {bad[:5]}"
    assert code in CLEAN_EXIT


@pytest.fixture(scope="session")
def fbaseline(fproxy: ProxyProcess) -> Baseline:
    return Baseline.take(fproxy)


@pytest.fixture
def clean(
    fproxy: ProxyProcess, fbaseline: Baseline, servers: tuple[Server, Server]
) -> Iterator[ProxyProcess]:
    """The faults proxy, checked after the case: nothing left behind."""
    start = fproxy.log_size()
    yield fproxy
    check_clean(fproxy, servers, fbaseline)
    bad = fproxy.bad_log_lines(start)
    assert not bad, f"twinkly logged unhandled errors: {bad[:5]}\n{fproxy.log_text(start)}"
    assert fproxy.process.poll() is None, "the faults proxy died"


@pytest.fixture(scope="session")
def throwaway(sandbox: Sandbox) -> Iterator[tuple[Server, Server]]:
    """A pg15 + pg18 pair of the faults suite alone (max_connections 400): its target may
    be stopped with -m immediate, and hundreds of sessions fit."""
    pair = make_throwaway_pair(sandbox)
    yield pair
    for server in pair:
        stop_server(server, "fast")

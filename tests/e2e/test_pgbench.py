"""pgbench through Twinkly: initialisation (COPY, VACUUM, DDL), then read-only and TPC-B-like
runs with 4 clients in each query mode; no transaction fails and both databases agree."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.backends

PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")
SCALE = 2
DURATION = "3"

CHECKS = {
    "accounts": "select count(*), sum(abalance), sum(bid) from pgbench_accounts",
    "branches": "select count(*), sum(bbalance) from pgbench_branches",
    "tellers": "select count(*), sum(tbalance) from pgbench_tellers",
    "history": "select count(*), coalesce(sum(delta), 0), coalesce(sum(aid), 0),"
    " coalesce(sum(tid), 0), coalesce(sum(bid), 0) from pgbench_history",
}


def _pgbench(proxy, *args: str, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", PGPASSWORD="twinkly-pw", PGSSLMODE="disable")
    cmd = [str(PGBENCH), "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "twinkly", *args]
    result = subprocess.run(
        [*cmd, "app"], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"pgbench {args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _both_agree(both_equal) -> dict[str, tuple]:
    return {name: both_equal(sql)[0] for name, sql in CHECKS.items()}


@pytest.fixture
def initialised(fresh_db, proxy, both_equal) -> dict[str, tuple]:
    """Fresh pgbench tables for each test, created through the proxy (-i drops them first),
    so that one run's divergence does not fail the next."""
    output = _pgbench(proxy, "-i", "-s", str(SCALE), "-q")
    assert "done in" in output
    state = _both_agree(both_equal)
    assert state["accounts"] == (100000 * SCALE, 0, sum(range(1, SCALE + 1)) * 100000)
    assert state["branches"] == (SCALE, 0)
    assert state["tellers"] == (10 * SCALE, 0)
    assert state["history"][0] == 0
    return state


def _run(proxy, *args: str) -> tuple[int, str]:
    output = _pgbench(proxy, "-c", "4", "-j", "2", "-T", DURATION, "-n", *args)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    assert failed is not None, output
    assert failed.group(1) == "0", output
    processed = re.search(r"number of transactions actually processed: (\d+)", output)
    assert processed is not None, output
    assert int(processed.group(1)) > 0, output
    return int(processed.group(1)), output


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_select_only(initialised, proxy, both_equal, mode: str) -> None:
    _run(proxy, "-S", "-M", mode)
    assert _both_agree(both_equal) == initialised


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_tpcb_like(initialised, proxy, both_equal, mode: str) -> None:
    before = initialised
    processed, _ = _run(proxy, "-M", mode)
    after = _both_agree(both_equal)
    # Every processed transaction added one history row, on both servers.
    assert after["history"][0] == before["history"][0] + processed
    # The balances moved by the same total everywhere.
    moved = after["history"][1] - before["history"][1]
    assert after["accounts"][1] - before["accounts"][1] == moved
    assert after["branches"][1] - before["branches"][1] == moved
    assert after["tellers"][1] - before["tellers"][1] == moved

"""The benchmark scripts still run against the code they measure: an API change that
breaks one is found here, not on the day someone needs the figures."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]


def bench(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_comparator_benchmark_judges_and_times() -> None:
    out = bench("comparator.py", "--statements", "2000", "--rounds", "1")
    for mode in ("simple", "extended"):
        line = re.search(rf"^{mode} +judge +([\d.]+) us +judge\+time +([\d.]+) us", out, re.M)
        assert line is not None, out
        assert float(line[1]) > 0 and float(line[2]) > 0


@pytest.mark.parametrize("script", ["run.py", "instructions.py"])
def test_the_other_benchmarks_start(script: str) -> None:
    """Their imports and arguments (a whole run needs servers, and minutes)."""
    assert "--baseline" in bench(script, "--help")


def test_the_fan_out_relay_answers_with_the_truth_and_runs_on_both(servers, tmp_path) -> None:
    """bench/relay.py: the floor row of bench/run.py must measure a working fan-out."""
    sys.path.insert(0, str(REPO / "bench"))
    from processes import Relay

    pg15, pg18 = servers
    relay = Relay(tmp_path, pg15, pg18)
    relay.start()
    try:
        table = f"relay_probe_{os.getpid()}"
        with psycopg.connect(
            host="127.0.0.1", port=relay.port, user="twinkly", dbname="app", sslmode="disable"
        ) as conn:
            conn.autocommit = True
            assert conn.info.parameter_status("server_version").startswith("15.")
            conn.execute(f"create table {table} (n int)")
            conn.execute(f"insert into {table} select generate_series(1, 3)")
            version = conn.execute("select current_setting('server_version_num')").fetchone()
            assert version is not None and version[0].startswith("15")
        for server in (pg15, pg18):  # the statements ran on both
            with psycopg.connect(server.dsn(), autocommit=True) as direct:
                assert direct.execute(f"select count(*) from {table}").fetchone() == (3,)
                direct.execute(f"drop table {table}")
    finally:
        relay.stop()


def test_the_report_judges_every_goal_and_compares_cpu_with_the_baseline() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    import run

    def entry(tps: float, ratio: float, cpu: float | None) -> dict:
        return {"runs_tps": [tps], "median_tps": tps, "ratio": ratio,
                "cpu_us_per_txn": cpu, "errors": []}  # fmt: skip

    pgbench = {
        mode: {
            "direct": entry(1000, 1.0, None),
            "twinkly": entry(ratio * 1000, ratio, cpu),
            "baseline": entry(150, 0.15, 200.0),
        }
        for mode, ratio, cpu in (("simple", 0.31, 79.0), ("prepared", 0.24, 90.0),
                                 ("extended", 0.26, 101.0))
    }  # fmt: skip
    rss = {"twinkly": {"baseline_mb": 50.0, "peak_mb": 52.0, "peak_5m_mb": 52.0}}
    big = {"direct": {"median_s": 1.0}, "twinkly": {"median_s": 1.2, "ratio": 1.2}}
    results = {"pgbench": pgbench, "big_select": big, "twinkly_rss": rss, "accelerators": {}}
    args = argparse.Namespace(clients=4, threads=2, scale=10, rounds=1, duration=1,
                              baseline="abc123")  # fmt: skip
    lines = run.report(results, args).splitlines()
    goals = {line.split()[0]: line for line in lines if " twinkly " in line and "TPS >=" in line}
    assert "TPS >= 0.30x PASS, CPU <= 80 PASS" in goals["simple"]
    assert "TPS >= 0.25x FAIL" in goals["prepared"]
    assert "TPS >= 0.25x PASS, CPU <= 100 FAIL" in goals["extended"]
    assert "  simple    twinkly 0.40x" in lines
    assert "  extended  twinkly 0.51x" in lines
    assert any("1.20x direct" in line and "peak 52.0 MB" in line for line in lines)

"""The README's first command: the embedded default runs, answers, and cleans up."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
from pgwire import free_port

pytestmark = pytest.mark.backends


def test_demo_runs_and_stops_cleanly(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    env = dict(
        os.environ,
        TWINKLY_PORT=str(port),
        TWINKLY_HTTP_PORT=str(http_port),
        TWINKLY_PG15_PORT="58015",
        TWINKLY_PG18_PORT="58018",
    )
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115 - closed below
    demo = subprocess.Popen(
        [sys.executable, "-m", "devtools.demo"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        dsn = f"host=127.0.0.1 port={port} user=twinkly password=twinkly-pw dbname=app"
        deadline = time.monotonic() + 90
        while True:
            try:
                with psycopg.connect(dsn, connect_timeout=2) as conn:
                    assert conn.execute("select 40 + 2").fetchone() == (42,)
                break
            except psycopg.OperationalError:
                assert demo.poll() is None, (tmp_path / "demo.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "demo.log").read_text()
                time.sleep(0.5)
        output = (tmp_path / "demo.log").read_text()
        assert f"psql -h 127.0.0.1 -p {port} -U twinkly app" in output
        assert f"Dashboard: http://127.0.0.1:{http_port}/" in output
        events = re.search(r"Events file: (\S+/reports/twinkly-events\.jsonl)", output)
        assert events, output
        for side in ("truth  (pg15)", "target (pg18)"):
            line = re.search(
                rf"{re.escape(side)}: PGPASSWORD=twinkly-pw (\S*psql) -h 127.0.0.1 -p (\d+)"
                " -U twinkly app",
                output,
            )
            assert line, output
            direct = f"host=127.0.0.1 port={line[2]} user=twinkly password=twinkly-pw dbname=app"
            with psycopg.connect(direct, connect_timeout=5) as conn:
                major = conn.info.server_version // 10000
            assert major == (15 if "truth" in side else 18)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10) as r:
            assert r.read() == b"ok"
        sandbox = next(line for line in output.splitlines() if "source of truth PostgreSQL" in line)
        assert "PostgreSQL 15" in sandbox and "PostgreSQL 18" in sandbox
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        log.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)

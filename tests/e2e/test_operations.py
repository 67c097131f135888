"""Operating a running proxy against the real servers: the admin console from psql, the
HTTP status server and its metrics, the manhole over SSH, SIGHUP reload without dropping
a session, the protocol trace and the progress line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import paramiko
import psycopg
import pytest
from pgwire import free_port
from proxyproc import start_proxy_process

from devtools.sandbox import PG15_BINDIR

pytestmark = pytest.mark.backends

MISMATCH = "select v from ops_t where id = 2"


def direct(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


@pytest.fixture(scope="module")
def operated(servers, tmp_path_factory):
    http_port, manhole_port = free_port(), free_port()
    extra = f"""
proxy.admin.users = ["twinkly"]
monitoring {{
  http {{ enabled = true, port = {http_port} }}
  manhole {{ enabled = true, port = {manhole_port}, users {{ admin = "s3cret" }} }}
  progress-interval = 1s
}}
debug {{ log-protocol = true, log-protocol-application = "^traced$" }}
"""
    workdir = tmp_path_factory.mktemp("operated")
    proxy = start_proxy_process(*servers, workdir, extra=extra)
    proxy.http = f"http://127.0.0.1:{http_port}"
    proxy.manhole_port = manhole_port
    for dsn in (proxy.truth_dsn, proxy.target_dsn):
        direct(
            dsn,
            "drop table if exists ops_t",
            "create table ops_t (id int primary key, v text)",
            "insert into ops_t values (1, 'a'), (2, 'b')",
        )
    direct(proxy.target_dsn, "update ops_t set v = 'B' where id = 2")
    try:
        yield proxy
    finally:
        proxy.stop()
    assert not proxy.bad_log_lines(), proxy.log_text()


def mismatch_through(proxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute(MISMATCH).fetchall() == [("b",)]


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def wait_until(check, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def psql(proxy, sql: str, user: str = "twinkly", database: str = "twinkly"):
    env = {**os.environ, "PGPASSWORD": "twinkly-pw", "PGCONNECT_TIMEOUT": "10"}
    command = [
        str(PG15_BINDIR / "psql"),
        "-X",
        "-A",
        "-F",
        "|",
        "-h",
        "127.0.0.1",
        "-p",
        str(proxy.port),
        "-U",
        user,
        "-c",
        sql,
        database,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


def mismatches(proxy) -> int:
    _, _, body = get(proxy.http + "/api/totals")
    return json.loads(body)["outcomes"]["mismatched"]


def test_admin_console_from_psql(operated) -> None:
    mismatch_through(operated)
    wait_until(lambda: mismatches(operated) >= 1, "the mismatch to be counted")
    stats = psql(operated, "SHOW STATS")
    assert stats.returncode == 0, stats.stderr
    lines = dict(line.split("|") for line in stats.stdout.splitlines()[1:-1])
    assert int(lines["outcomes.mismatched"]) >= 1
    assert int(lines["statements"]) >= 1
    shown = psql(operated, "SHOW MISMATCHES")
    assert MISMATCH in shown.stdout and "result_mismatch" in shown.stdout
    fingerprints = psql(operated, "SHOW FINGERPRINTS").stdout
    assert MISMATCH in fingerprints and "|1|f|" in fingerprints
    config = psql(operated, "SHOW CONFIG").stdout
    assert "monitoring.manhole.users|***" in config and "s3cret" not in config
    sessions = psql(operated, "SHOW SESSIONS")
    assert sessions.returncode == 0 and sessions.stdout.startswith("id|client|user")


def test_admin_console_is_for_admin_users_only(operated) -> None:
    refused = psql(operated, "SHOW STATS", user="tw_trust")
    assert refused.returncode != 0
    assert "may not use the admin console" in refused.stderr


def test_mute_stops_the_events_of_a_fingerprint(operated) -> None:
    counted = mismatches(operated)
    mismatch_through(operated)
    wait_until(lambda: mismatches(operated) > counted, "the mismatch to be counted")
    # Counted and kept in the same step: the event is listed by now.
    events = json.loads(get(operated.http + "/api/events?kind=result_mismatch&limit=500")[2])
    events = events["events"]
    fingerprint = events[0]["fingerprint"]
    assert psql(operated, f"MUTE {fingerprint}").returncode == 0
    before = len(events)
    counted = mismatches(operated)
    mismatch_through(operated)
    wait_until(lambda: mismatches(operated) > counted, "the muted mismatch to be counted")
    after = json.loads(get(operated.http + "/api/events?kind=result_mismatch&limit=500")[2])
    assert len(after["events"]) == before  # counted, not reported
    assert psql(operated, f"UNMUTE {fingerprint}").returncode == 0
    mismatch_through(operated)
    wait_until(
        lambda: (
            len(json.loads(get(operated.http + "/api/events?kind=result_mismatch")[2])["events"])
            > before
        ),
        "the unmuted mismatch event",
    )


def test_http_status_server(operated) -> None:
    mismatch_through(operated)
    assert get(operated.http + "/healthz")[0] == 200
    code, kind, body = get(operated.http + "/readyz")
    assert code == 200 and json.loads(body)["ready"] is True, body
    code, kind, metrics = get(operated.http + "/metrics")
    assert code == 200 and kind.startswith("text/plain")
    assert 'twinkly_statements_total{outcome="mismatched"}' in metrics
    assert 'twinkly_statement_duration_seconds_bucket{backend="pg18",le="+Inf",role="target"}' in (
        metrics
    )
    assert 'twinkly_bytes_total{direction="out",leg="client"}' in metrics
    assert 'twinkly_backend_connect_failures_total{backend="pg15"} 0.0' in metrics
    code, _, body = get(operated.http + "/api/fingerprints")
    rows = json.loads(body)["fingerprints"]
    assert any(row["mismatches"] >= 1 and row["truth"]["count"] >= 1 for row in rows), rows
    assert get(operated.http + "/api/events?limit=0")[0] == 400


def test_readyz_names_an_unreachable_backend(start_proxy) -> None:
    """With comparison.require-target the target is needed: 503 without it."""
    http_port = free_port()
    proxy = start_proxy(
        "unready",
        ready=False,
        target_port=free_port(),
        extra=f"monitoring.http {{ enabled = true, port = {http_port} }}\n"
        "comparison.require-target = true",
    )
    proxy.wait_listening()
    code, _, body = wait_until(
        lambda: (lambda r: r if r[0] in (200, 503) else None)(
            get(f"http://127.0.0.1:{http_port}/readyz")
        ),
        "the status server",
    )
    answer = json.loads(body)
    assert code == 503 and answer["ready"] is False
    assert answer["reasons"]["truth"] is None and "pg18" in answer["reasons"]["target"]


def test_manhole_evaluates_in_the_live_service(operated) -> None:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        "127.0.0.1",
        operated.manhole_port,
        username="admin",
        password="s3cret",
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        channel = client.invoke_shell()
        channel.settimeout(10)
        channel.send(
            b"print('outcomes', sorted(monitor.outcomes)[0], len(config.proxy.admin.users))\r"
        )
        output = b""
        deadline = time.monotonic() + 10
        while b"outcomes dropped 1" not in output and time.monotonic() < deadline:
            output += channel.recv(65536)
        assert b"outcomes dropped 1" in output, output
    finally:
        client.close()


def test_sighup_reloads_without_dropping_sessions(operated) -> None:
    with psycopg.connect(operated.dsn(), autocommit=True) as kept:
        assert kept.execute("select 1").fetchall() == [(1,)]
        text = operated.config_path.read_text()
        operated.config_path.write_text(
            text + '\ncomparison.exclude-patterns = ["from ops_t where id = 2"]\n'
        )
        try:
            size = operated.log_size()
            os.kill(operated.pid, signal.SIGHUP)
            wait_until(
                lambda: "comparison.exclude-patterns" in operated.log_text(size), "the reload"
            )
            _, _, body = get(operated.http + "/api/totals")
            excluded = json.loads(body)["outcomes"]["excluded"]
            assert kept.execute(MISMATCH).fetchall() == [("b",)]  # the old session goes on
            wait_until(
                lambda: (
                    json.loads(get(operated.http + "/api/totals")[2])["outcomes"]["excluded"]
                    > excluded
                ),
                "the statement to be excluded",
            )
        finally:
            operated.config_path.write_text(text)
            os.kill(operated.pid, signal.SIGHUP)


def test_protocol_trace_of_the_selected_sessions(operated) -> None:
    trace = operated.workdir / "reports" / "twinkly-protocol.log"
    with psycopg.connect(operated.dsn(application_name="traced"), autocommit=True) as conn:
        conn.execute("select 'traced-marker'").fetchall()
    with psycopg.connect(operated.dsn(application_name="other"), autocommit=True) as conn:
        conn.execute("select 'untraced-marker'").fetchall()
    text = wait_until(
        lambda: trace.exists() and "CommandComplete" in trace.read_text() and trace.read_text(),
        "the trace file",
    )
    assert "traced-marker" in text and "untraced-marker" not in text
    for leg in ("client>", "client<", "truth>", "truth<", "target>", "target<"):
        assert f" {leg} " in text, leg
    # The start-up too, recorded before the session had an id; no secret in it.
    for leg in ("client", "truth", "target"):
        assert f" {leg}> StartupMessage" in text, leg
    assert "twinkly-pw" not in text


def test_progress_line(operated) -> None:
    wait_until(lambda: "progress: " in operated.log_text(), "a progress line")
    line = next(x for x in operated.log_text().splitlines() if "progress: " in x)
    assert "sessions open" in line and "statements" in line


def test_trace_a_running_session_from_the_admin_console(operated) -> None:
    trace = operated.workdir / "reports" / "twinkly-protocol.log"
    with psycopg.connect(operated.dsn(application_name="late"), autocommit=True) as conn:
        conn.execute("select 'before-trace'").fetchall()
        pid = conn.info.backend_pid  # Twinkly's own process id for the session
        started = psql(operated, f"TRACE {pid}")
        assert started.returncode == 0, started.stderr
        assert f"tracing session {pid}" in started.stderr  # psql prints NOTICEs there
        conn.execute("select 'late-marker'").fetchall()
        assert psql(operated, f"UNTRACE {pid}").returncode == 0
        conn.execute("select 'after-untrace'").fetchall()
    text = wait_until(
        lambda: trace.exists() and "late-marker" in trace.read_text() and trace.read_text(),
        "the late session in the trace",
    )
    lines = [line for line in text.splitlines() if f" s={pid} " in line]
    assert any("client> Query sql=\"select 'late-marker'\"" in x for x in lines), lines
    assert any(" target< CommandComplete" in x for x in lines), lines
    assert "before-trace" not in text and "after-untrace" not in text
    unknown = psql(operated, "TRACE 1")
    assert unknown.returncode != 0 and "no session 1" in unknown.stderr


def test_readyz_is_ready_on_the_truth_alone(start_proxy) -> None:
    """Without require-target the proxy serves on the truth alone: ready, and the body
    says what state the target is in."""
    http_port = free_port()
    proxy = start_proxy(
        "degraded",
        ready=False,
        target_port=free_port(),
        extra=f"monitoring.http {{ enabled = true, port = {http_port} }}",
    )
    proxy.wait_listening()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:  # served, not compared
        assert conn.execute("select 1").fetchone() == (1,)
    code, _, body = wait_until(
        lambda: (lambda r: r if r[0] in (200, 503) else None)(
            get(f"http://127.0.0.1:{http_port}/readyz")
        ),
        "the status server",
    )
    answer = json.loads(body)
    assert code == 200 and answer["ready"] is True
    assert "pg18" in answer["reasons"]["target"]
    assert answer["reasons"]["target_state"]["state"] in ("down", "probing")
    assert answer["reasons"]["target_state"]["sessions_not_compared"] >= 1

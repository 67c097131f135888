"""Each comparison, routing and reporting option, wired end to end through a proxy of its
own against the two real servers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest
from pgwire import free_port

pytestmark = pytest.mark.backends


def events_of(proxy, settle: float = 1.0) -> list[dict]:
    time.sleep(settle)
    path = Path(proxy.workdir) / "reports" / "twinkly-events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def run(dsn: str, *statements: str) -> list:
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in statements:
            cur = conn.execute(sql)
            out.append(cur.fetchall() if cur.description else cur.statusmessage)
    return out


def differing_table(proxy, name: str = "opt") -> None:
    """A table whose row 2 differs between the two databases."""
    run(
        proxy.dsn(),
        f"drop table if exists {name}",
        f"create table {name} (id int, v text)",
        f"insert into {name} select g, 'v' || g from generate_series(1, 10) g",
    )
    run(proxy.target_dsn, f"update {name} set v = 'other' where id = 2")


def test_routing_patterns(start_proxy) -> None:
    extra = (
        'proxy.routing { postgres-only-patterns = ["^insert into routed_pg"],'
        ' yugabyte-only-patterns = ["^insert into routed_yb$", "routed_yb_only"] }'
    )
    proxy = start_proxy(extra=extra)
    run(proxy.dsn(), "drop table if exists routed_pg", "create table routed_pg (n int)")
    run(
        proxy.target_dsn,
        "drop table if exists routed_yb_only",
        "create table routed_yb_only (n int)",
    )
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("insert into routed_pg values (1)", prepare=False)
        # Only the target has this table: the client gets the target's answer.
        assert conn.pgconn.exec_(b"insert into routed_yb_only values (7)").command_status == (
            b"INSERT 0 1"
        )
        assert conn.execute("select 1").fetchone() == (1,)  # the session goes on in step
    assert run(proxy.truth_dsn, "select count(*) from routed_pg") == [[(1,)]]
    assert run(proxy.target_dsn, "select count(*) from routed_pg") == [[(0,)]]
    assert run(proxy.target_dsn, "select n from routed_yb_only") == [[(7,)]]
    assert not [e for e in events_of(proxy) if e["kind"] == "error_divergence"]


def test_exclude_patterns_and_sample_rate(start_proxy) -> None:
    excluded = start_proxy("excluded", extra='comparison.exclude-patterns = ["from opt\\\\b"]')
    differing_table(excluded)
    run(excluded.dsn(), "select * from opt")
    assert events_of(excluded) == []
    sampled = start_proxy("sampled", extra="comparison.sample-rate = 0")
    differing_table(sampled)
    run(sampled.dsn(), "select * from opt")
    assert events_of(sampled) == []
    sampled.stop()  # the totals are logged at shutdown
    assert "'mismatched': 0" in sampled.log_text()
    assert "'sampled_out': 0" not in sampled.log_text()
    excluded.stop()
    assert "'excluded': 1" in excluded.log_text()


def test_max_sample_rows_and_redaction(start_proxy) -> None:
    proxy = start_proxy(extra="comparison.max-sample-rows = 2\nreporting.redact = true")
    differing_table(proxy)
    run(proxy.target_dsn, "update opt set v = 'x' where id > 5")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("select * from opt where v <> %s", ("secret-literal",))
    (event,) = [e for e in events_of(proxy) if e["kind"] == "result_mismatch"]
    assert len(event["differences"]) == 2
    assert "secret-literal" not in json.dumps(event)
    assert event["parameters"] is None


def test_log_differences_only_keeps_noise_out_of_the_report(start_proxy) -> None:
    quiet = start_proxy(
        "quiet",
        extra="comparison.log-differences-only = true\ncomparison.report-slow-queries = false",
    )
    run(quiet.dsn(), "select random()")
    assert events_of(quiet) == []
    loud = start_proxy("loud", extra="comparison.report-slow-queries = false")
    run(loud.dsn(), "select random()")
    assert [e["kind"] for e in events_of(loud)] == ["noise"]


def test_log_errors(start_proxy) -> None:
    proxy = start_proxy(extra="monitoring.log-errors = true")
    with pytest.raises(psycopg.errors.DivisionByZero):
        run(proxy.dsn(), "select 1/0")
    time.sleep(0.5)
    log = proxy.log_text()
    assert "SQL error on pg15" in log and "SQL error on pg18" in log
    assert "22012" in log


def test_comparison_disabled_writes_nothing(start_proxy) -> None:
    proxy = start_proxy(extra="comparison.enabled = false")
    differing_table(proxy)
    run(proxy.dsn(), "select * from opt")
    assert events_of(proxy) == []


def test_target_gets_the_truths_output_settings(start_proxy) -> None:
    """DateStyle, IntervalStyle, TimeZone and extra_float_digits shape every value's text:
    the target's session gets the truth's, so configuration differences are not
    mismatches (and the client still sees exactly the truth's)."""
    user = "proxy.postgresql.user = tw_trust\nproxy.yugabytedb.user = tw_trust"
    proxy = start_proxy(extra=user)
    settings = (
        "alter role tw_trust in database app set DateStyle = 'German, DMY'",
        "alter role tw_trust in database app set IntervalStyle = 'sql_standard'",
        "alter role tw_trust in database app set TimeZone = 'Asia/Tokyo'",
        "alter role tw_trust in database app set extra_float_digits = 0",
    )
    run(proxy.truth_dsn, *settings)
    try:
        query = (
            "select current_setting('DateStyle'), current_setting('IntervalStyle'),"
            " current_setting('TimeZone'), current_setting('extra_float_digits'),"
            " '2024-01-02 03:04:05'::timestamp::text, (interval '1 day 2 hours')::text,"
            " (1/3::float8)::text"
        )
        with psycopg.connect(proxy.dsn(user="tw_trust"), autocommit=True) as conn:
            row = conn.execute(query).fetchone()
        assert row[:4] == ("German, DMY", "sql_standard", "Asia/Tokyo", "0")
        assert [e["kind"] for e in events_of(proxy)] == []
    finally:
        run(proxy.truth_dsn, "alter role tw_trust in database app reset all")


def test_bundles_are_written_and_recheckable(start_proxy) -> None:
    import subprocess
    import sys

    proxy = start_proxy(extra='reporting.bundles = "bundles"')
    differing_table(proxy, "bundled")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("select * from bundled where id = %s", (2,))
    time.sleep(1.0)
    bundles = list((Path(proxy.workdir) / "bundles").glob("*.json"))
    assert len(bundles) == 1, bundles
    bundle = json.loads(bundles[0].read_text())
    assert bundle["statement"] == "select * from bundled where id = $1"
    assert bundle["parameters"] == ["\\x0002"]  # psycopg sends an int2, in binary
    assert bundle["parameter_formats"] == [1]
    assert bundle["settings"]["TimeZone"]
    recheck = [
        sys.executable,
        "-m",
        "twinkly",
        "recheck",
        str(bundles[0]),
        "--truth",
        proxy.truth_dsn,
        "--target",
        proxy.target_dsn,
    ]
    result = subprocess.run(recheck, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "still differs" in result.stdout
    run(proxy.target_dsn, "update bundled set v = 'v2' where id = 2")
    result = subprocess.run(recheck, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "now equal" in result.stdout


def test_yugabytedb_as_the_source_of_truth(start_proxy) -> None:
    """comparison.source-of-truth = yugabytedb: the client gets the second backend's
    answers (here PostgreSQL 18), and events name it as the truth."""
    proxy = start_proxy(extra='comparison.source-of-truth = "yugabytedb"')
    assert run(proxy.dsn(), "select current_setting('server_version_num')::int / 10000") == [
        [(18,)]
    ]
    differing_table(proxy, "swapped")  # row 2 differs on pg18, now the truth
    run(proxy.dsn(), "select * from swapped")
    (event,) = [e for e in events_of(proxy) if e["kind"] == "result_mismatch"]
    assert (event["truth"]["label"], event["target"]["label"]) == ("pg18", "pg15")


def test_unreachable_target_is_an_event(start_proxy) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    proxy = start_proxy(ready=False, target_port=closed_port)
    deadline = time.monotonic() + 15
    while not proxy.accepts():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for _ in range(3):  # served by the truth alone; one event for the outage
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    (event,) = events_of(proxy)
    assert event["kind"] == "backend_unavailable"
    assert "pg18" in event["reason"]


def test_unreachable_target_refuses_with_require_target(start_proxy) -> None:
    proxy = start_proxy(
        ready=False, target_port=free_port(), extra="comparison.require-target = true"
    )
    proxy.wait_listening()
    with pytest.raises(psycopg.OperationalError, match="pg18"):
        psycopg.connect(proxy.dsn())

"""The comparison against the two real servers: a divergence corpus (each case must give
its event) and a noise corpus (none may give a mismatch). Data is written directly into
one backend to make the two databases differ."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest
from proxyproc import start_proxy_process

pytestmark = pytest.mark.backends

MISMATCHES = {
    "result_mismatch",
    "column_mismatch",
    "tag_mismatch",
    "error_divergence",
    "transaction_divergence",
}


class Events:
    """The proxy's events file, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = 0

    def all(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def new(self, settle: float = 0.6) -> list[dict]:
        """Events written since the last call, after the writer had time to flush."""
        time.sleep(settle)
        events = self.all()
        fresh, self.seen = events[self.seen :], len(events)
        return fresh

    def wait_for(self, kind: str, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.all()[self.seen :]
            if any(e["kind"] == kind for e in events):
                time.sleep(0.3)
                return self.new(settle=0)
            time.sleep(0.05)
        raise AssertionError(f"no {kind} event after #{self.seen}; all: {kinds(self.all())}")


@pytest.fixture(scope="module")
def comparing(servers, tmp_path_factory):
    """A proxy of this module's own, writing its events where the tests read them."""
    workdir = tmp_path_factory.mktemp("comparing")
    proxy = start_proxy_process(*servers, workdir)
    try:
        yield proxy, Events(workdir / "reports" / "twinkly-events.jsonl")
    finally:
        proxy.stop()
    assert not proxy.bad_log_lines(), proxy.log_text()


def run(proxy, *statements: str) -> list:
    out = []
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for sql in statements:
            cur = conn.execute(sql)
            out.append(cur.fetchall() if cur.description else cur.statusmessage)
    return out


def direct(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def kinds(events: list[dict]) -> list[str]:
    return [e["kind"] for e in events]


@pytest.fixture
def table(comparing):
    proxy, events = comparing
    run(
        proxy,
        "drop table if exists cmp",
        "create table cmp (id int primary key, name text, amount numeric, score float8)",
        "insert into cmp select g, 'n' || g, g * 1.5, g / 3.0 from generate_series(1, 50) g",
    )
    events.new()
    return proxy, events


def test_value_difference_is_a_result_mismatch_with_the_rows(table) -> None:
    proxy, events = table
    direct(proxy.target_dsn, "update cmp set name = 'changed' where id = 7")
    run(proxy, "select id, name from cmp where id between 5 and 9")
    (event,) = events.wait_for("result_mismatch")
    assert event["statement"] == "select id, name from cmp where id between 5 and 9"
    assert event["fingerprint"]
    assert event["truth"]["label"] == "pg15" and event["target"]["label"] == "pg18"
    assert event["truth"]["rows"] == event["target"]["rows"] == 5
    (difference,) = event["differences"]
    assert difference["truth"] == ["7", "n7"] and difference["target"] == ["7", "changed"]


def test_row_count_difference(table) -> None:
    proxy, events = table
    direct(proxy.target_dsn, "delete from cmp where id > 45")
    run(proxy, "select * from cmp")
    (event,) = events.wait_for("result_mismatch")
    assert (event["truth"]["rows"], event["target"]["rows"]) == (50, 45)
    assert len(event["differences"]) == 5
    assert {d["kind"] for d in event["differences"]} == {"missing_on_target"}


def test_command_tag_count_then_caused_by(table) -> None:
    proxy, events = table
    direct(proxy.target_dsn, "delete from cmp where id <= 3")
    run(proxy, "update cmp set amount = 0 where id <= 10")
    (tag,) = events.wait_for("tag_mismatch")
    assert (tag["truth"]["tag"], tag["target"]["tag"]) == ("UPDATE 10", "UPDATE 7")
    run(proxy, "select id, amount from cmp order by id")
    (later,) = events.wait_for("result_mismatch")
    assert later["caused_by"] == tag["id"]


def test_column_type_difference(comparing) -> None:
    proxy, events = comparing
    direct(proxy.truth_dsn, "drop table if exists typed", "create table typed (n int)")
    direct(proxy.target_dsn, "drop table if exists typed", "create table typed (n bigint)")
    run(proxy, "insert into typed values (1)", "select n from typed")
    events_ = events.wait_for("column_mismatch")
    (event,) = [e for e in events_ if e["kind"] == "column_mismatch"]
    assert any("int4" in d and "int8" in d for d in event["differences"])


def test_one_sided_error_outside_a_transaction(comparing) -> None:
    proxy, events = comparing
    direct(proxy.truth_dsn, "drop table if exists only_truth", "create table only_truth (n int)")
    direct(proxy.target_dsn, "drop table if exists only_truth")
    run(proxy, "insert into only_truth values (1)")
    (event,) = events.wait_for("error_divergence")
    assert event["truth"]["sqlstate"] is None
    assert event["target"]["sqlstate"] == "42P01"
    assert "pg18" in event["reason"]


def test_target_failure_inside_a_committed_transaction_is_reported_once(comparing) -> None:
    proxy, events = comparing
    direct(proxy.truth_dsn, "drop table if exists only_truth", "create table only_truth (n int)")
    direct(proxy.target_dsn, "drop table if exists only_truth")
    with psycopg.connect(proxy.dsn()) as conn:  # a transaction
        conn.execute("insert into only_truth values (1)")
        for i in range(5):
            conn.execute("select %s::int", (i,))
        conn.commit()
    found = events.new(settle=1.0)
    assert kinds(found) == ["error_divergence", "transaction_divergence"], found
    assert found[1]["caused_by"] == found[0]["id"]
    assert found[0]["in_transaction"] is True


def test_truth_failure_rolls_back_the_target_even_on_commit(comparing) -> None:
    proxy, events = comparing
    direct(proxy.truth_dsn, "drop table if exists only_target", "drop table if exists kept")
    direct(
        proxy.target_dsn,
        "drop table if exists only_target",
        "drop table if exists kept",
        "create table only_target (n int)",
    )
    run(proxy, "create table kept (n int)")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("begin")
        conn.execute("insert into kept values (1)")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("insert into only_target values (1)")
        assert conn.execute("commit").statusmessage == "ROLLBACK"
    for dsn in (proxy.truth_dsn, proxy.target_dsn):
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select count(*) from kept").fetchone() == (0,)
    assert "error_divergence" in kinds(events.new())


def test_noise_corpus_gives_no_mismatch(comparing) -> None:
    proxy, events = comparing
    for dsn, order in ((proxy.truth_dsn, "asc"), (proxy.target_dsn, "desc")):
        direct(
            dsn,
            "drop table if exists heap",
            "create table heap (k int, v text)",
            "insert into heap select g % 5, 'v' || g from generate_series(1, 40) g"
            f" order by g {order}",
        )
    events.new()
    run(
        proxy,
        "select * from heap",  # different physical order, no ORDER BY: a multiset
        "select * from heap order by k",  # ties on k in different orders
        "select k, count(*) from heap group by k",
        "select 0.1::float8 * 3, 1e300::float8 * 10, 'NaN'::float8, 1.50::numeric",
        "select now(), clock_timestamp(), random(), gen_random_uuid()",
        "select version(), pg_backend_pid(), inet_server_port()",
        "select * from heap limit 3",  # no total order
    )
    found = events.new(settle=1.0)
    assert not [e for e in found if e["kind"] in MISMATCHES], found
    assert "noise" in kinds(found)
    assert "nondeterministic" in kinds(found)
    noise = [e for e in found if e["kind"] == "noise"]
    assert any("now" in e["reason"] or "random" in e["reason"] for e in noise)


def test_two_million_rows_compared_in_bounded_memory(comparing) -> None:
    """A result far beyond the rows kept for a value-level diff is still compared, by
    count and digest, while the proxy's memory stays flat."""
    import subprocess
    import threading

    import psutil

    proxy, events = comparing
    direct(proxy.truth_dsn, "drop table if exists marker", "create table marker (n int)")
    direct(
        proxy.target_dsn,
        "drop table if exists marker",
        "create table marker (n int)",
        "insert into marker values (1234567)",
    )
    events.new()
    process = psutil.Process(proxy.pid)
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    sql = (
        "select g, md5(g::text) from generate_series(1, 2000000) g"
        " where g <> (select coalesce(max(n), 0) from marker)"
    )
    try:
        result = subprocess.run(
            ["/usr/lib/postgresql/15/bin/psql", proxy.dsn(), "-Atc", sql],
            capture_output=True,
            timeout=240,
            check=True,
        )
    finally:
        done.set()
        sampler.join()
    assert result.stdout.count(b"\n") == 2_000_000
    (event,) = events.wait_for("result_mismatch", timeout=30)
    assert (event["truth"]["rows"], event["target"]["rows"]) == (2_000_000, 1_999_999)
    assert event["truth"]["digest"] != event["target"]["digest"]
    assert "digest only" in event["reason"]
    growth_mb = (peak[0] - baseline) / 2**20
    assert growth_mb < 60, f"proxy RSS grew by {growth_mb:.0f} MB"

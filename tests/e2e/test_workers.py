"""proxy.workers: several worker processes behind one address, one operator view.

Each test runs a real twistd supervisor with its workers against the two real servers."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from pathlib import Path

import psutil
import psycopg
import pytest
from pgwire import free_port
from prometheus_client.parser import text_string_to_metric_families
from proxyproc import CLEAN_EXIT, assert_cancels_a_sleep


def workers_of(proxy) -> list[psutil.Process]:
    return [p for p in psutil.Process(proxy.pid).children() if p.is_running()]


def worker_serving(proxy, truth_pid: int) -> int:
    """Which worker process holds the connection to the truth's backend ``truth_pid``."""
    for index, worker in enumerate(workers_of(proxy)):
        for connection in worker.net_connections(kind="tcp"):
            to_truth = connection.raddr and connection.raddr.port == proxy.truth.port
            if to_truth and backend_pid_of(proxy, connection.laddr.port) == truth_pid:
                return index
    return -1


def backend_pid_of(proxy, client_port: int) -> int | None:
    with psycopg.connect(proxy.truth_dsn, autocommit=True) as conn:
        row = conn.execute(
            "select pid from pg_stat_activity where client_port = %s", (client_port,)
        ).fetchone()
    return row[0] if row else None


def wait_for(check, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def http_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def metric_samples(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sleepers(dsn: str, application: str) -> list:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "select pid from pg_stat_activity where application_name = %s"
            " and query like 'select pg_sleep%%' and state = 'active'",
            (application,),
        ).fetchall()


@pytest.fixture
def cluster(start_proxy):
    http = free_port()
    extra = f"proxy.workers = 4\nmonitoring.http {{ enabled = true, port = {http} }}\n"
    proxy = start_proxy("workers", extra=extra)
    wait_for(lambda: len(workers_of(proxy)) == 4, what="four workers")
    # Every worker listens once each has logged so: connections reach all of them.
    wait_for(lambda: proxy.log_text().count("Twinkly listening on") == 4, what="listening")
    proxy.http_port = http
    return proxy


def test_cancel_reaches_the_owning_worker_every_time(cluster) -> None:
    """A CancelRequest lands on any worker; it is forwarded to the session's own, and
    the statement stops on both backends, 50 times out of 50."""
    owners = set()
    for attempt in range(50):
        application = f"twinkly-workers-cancel-{attempt}"
        with psycopg.connect(cluster.dsn(application_name=application), autocommit=True) as conn:
            # The client is told the truth's own process id (see test_backend_pid).
            assert conn.execute("select pg_backend_pid()").fetchone()[0] == conn.info.backend_pid
            owners.add(worker_serving(cluster, conn.info.backend_pid))
            assert_cancels_a_sleep(conn, conn.cancel, delay=0.2)
            assert conn.execute("select 1").fetchone() == (1,)
        for dsn in (cluster.truth_dsn, cluster.target_dsn):
            wait_for(lambda d=dsn, a=application: not sleepers(d, a), 5, f"no sleeper ({attempt})")
    assert len(owners) > 1, "sessions were spread over several workers"


def test_one_view_of_all_workers(cluster) -> None:
    connections = 12
    for i in range(connections):
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            for j in range(5):
                conn.execute("select %s::int + %s", (i, j)).fetchone()
    port = cluster.http_port

    def counted() -> dict | None:
        # The workers report every second: wait for the view to catch up.
        totals = http_json(port, "/api/totals")
        done = totals["outcomes"].get("matched", 0) >= connections * 5
        return totals if done and totals["sessions_total"] >= connections else None

    totals = wait_for(counted, what="totals of every worker")
    assert totals["workers"] == 4
    samples = wait_for(
        lambda: (
            (s := metric_samples(port))
            and s.get(("twinkly_statements_total", (("outcome", "matched"),)), 0) >= connections * 5
            and s
        ),
        what="summed metrics",
    )
    assert samples[("twinkly_sessions_total", ())] >= connections


def test_events_of_all_workers_land_whole_in_one_file(cluster) -> None:
    with psycopg.connect(cluster.truth_dsn, autocommit=True) as conn:
        conn.execute("drop table if exists workers_drift; create table workers_drift (v int)")
        conn.execute("insert into workers_drift values (1)")
    with psycopg.connect(cluster.target_dsn, autocommit=True) as conn:
        conn.execute("drop table if exists workers_drift; create table workers_drift (v int)")
        conn.execute("insert into workers_drift values (2)")
    reads = 40
    for _ in range(reads // 4):
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            for _ in range(4):
                conn.execute("select v from workers_drift").fetchall()
    path = Path(cluster.workdir) / "reports" / "twinkly-events.jsonl"

    def mismatches() -> list | None:
        lines = path.read_text().splitlines() if path.exists() else []
        events = [json.loads(line) for line in lines]  # every line whole
        found = [e for e in events if e["kind"] == "result_mismatch"]
        return found if len(found) >= reads else None

    found = wait_for(mismatches, what="every mismatch event")
    assert len(found) == reads
    assert len({e["id"] for e in found}) == reads


def test_a_worker_that_dies_is_replaced(cluster) -> None:
    victim = workers_of(cluster)[1]
    victim.send_signal(signal.SIGKILL)
    wait_for(
        lambda: (
            len(workers_of(cluster)) == 4 and victim.pid not in {p.pid for p in workers_of(cluster)}
        ),
        what="a new worker",
    )
    for _ in range(8):  # whichever worker takes the connection serves it
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    assert "worker 1 ended" in cluster.log_text() or "ended (" in cluster.log_text()


def test_sigterm_stops_every_worker(start_proxy) -> None:
    proxy = start_proxy("workers-stop", extra="proxy.workers = 2\n")
    children = wait_for(lambda: len(workers_of(proxy)) == 2 and workers_of(proxy), what="workers")
    assert proxy.stop() in CLEAN_EXIT  # twistd ends by the signal it was given
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    run_dir = re.search(r"control sockets in (\S+)", proxy.log_text()).group(1)
    assert not Path(run_dir).exists(), "the supervisor removes its run directory"

"""The dashboard in a real browser: headless Chromium (Debian's chromium and chromium-driver)
driven by Selenium against the status site served by a real reactor in a subprocess.

The ``browser`` and ``status_site`` fixtures are meant for reuse by other browser tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 15.0
RATIO_TEXT = "\u00d7125.00"  # how the page writes a ratio of 125

# Serves make_site over a fake IStatus whose data comes from a JSON file; prints its port once
# listening (port 0: no race for a free port) and runs until terminated.
SERVER = r"""
import json, sys
from twisted.internet import defer, reactor
from zope.interface import implementer
from twinkly.ops.http import make_site
from twinkly.ops.status import IStatus

data = json.load(open(sys.argv[1]))

@implementer(IStatus)
class Status:
    started = 0.0
    def totals(self): return data["totals"]
    def events(self, kind=None, limit=50, before=None):
        found = [e for e in sorted(data["events"], key=lambda e: e["id"], reverse=True)
                 if (kind is None or e["kind"] == kind) and (before is None or e["id"] < before)]
        return found[:limit]
    def fingerprints(self): return data["fingerprints"]
    def sessions(self): return []
    def config_items(self): return []
    def mute(self, fingerprint): return True
    def unmute(self, fingerprint): return True
    def reload(self): return []
    def ready(self): return defer.succeed((True, {"truth": None, "target": None}))

site = make_site(Status(), lambda: (b"", "text/plain"))
port = reactor.listenTCP(0, site, interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""

MISMATCH_STATEMENT = "SELECT a FROM t WHERE b <b>bold</b> < 3"
SLOW_STATEMENT = "SELECT count(*) FROM big JOIN other USING (id)"
HEURISTIC = "Seq Scan on big on the target, Index Scan on the truth: missing index?"
LLM_TEXT = "The target lacks an index on big(id); run ANALYZE and recreate it."


def side(label: str, **fields: Any) -> dict:
    base = {"label": label, "rows": 2, "digest": "00", "tag": "SELECT 2", "sqlstate": None}
    return base | {"message": None, "elapsed_ms": 1.5} | fields


def sample_data() -> dict:
    """One result_mismatch (a statement with markup in it) and one slow_query with its
    plans, heuristic insights and an llm insight event pointing at it."""
    plan_truth = [{"Plan": {"Node Type": "Index Scan", "Relation Name": "big"}}]
    plan_target = [{"Plan": {"Node Type": "Seq Scan", "Relation Name": "big"}}]
    events = [
        {
            "id": "01J00000000000000000000001",
            "time": "2024-05-01T12:00:00.000Z",
            "kind": "result_mismatch",
            "session": 3,
            "statement": MISMATCH_STATEMENT,
            "fingerprint": "fpmismatch",
            "truth": side("pg15"),
            "target": side("pg18"),
            "differences": [
                {
                    "kind": "value",
                    "position": 1,
                    "truth": ["2", "truth-value"],
                    "target": ["2", "target-value"],
                    "columns": ["b"],
                }
            ],
            "caused_by": None,
            "reason": "rows differ in column b",
        },
        {
            "id": "01J00000000000000000000002",
            "time": "2024-05-01T12:00:01.000Z",
            "kind": "slow_query",
            "session": 4,
            "statement": SLOW_STATEMENT,
            "fingerprint": "fpslow",
            "truth": side("pg15", elapsed_ms=2.0),
            "target": side("pg18", elapsed_ms=250.0),
            "differences": None,
            "ratio": 125.0,
            "plans": {"truth": plan_truth, "target": plan_target},
            "plan_summary": {"truth": "Index Scan on big", "target": "Seq Scan on big"},
            "insights": [{"kind": "seq_scan", "message": HEURISTIC, "relation": "big"}],
        },
        {
            "id": "01J00000000000000000000003",
            "time": "2024-05-01T12:00:02.000Z",
            "kind": "insight",
            "event": "01J00000000000000000000002",
            "provider": "llm",
            "text": LLM_TEXT,
        },
    ]
    return {
        "events": events,
        "totals": {
            "sessions": 2,
            "statements": 7,
            "outcomes": {"matched": 5, "mismatched": 1, "one_sided_error": 0},
            "events": {"result_mismatch": 1, "slow_query": 1},
            "backends": {"truth": "pg15", "target": "pg18"},
            "uptime_s": 42.0,
        },
        "fingerprints": [
            {
                "fingerprint": "fpslow",
                "statement": SLOW_STATEMENT,
                "executions": 3,
                "mismatches": 0,
                "muted": False,
                "truth": {"count": 3, "p50_ms": 2.0, "p95_ms": 2.5, "max_ms": 3.0},
                "target": {"count": 3, "p50_ms": 250.0, "p95_ms": 260.0, "max_ms": 270.0},
                "p50_ratio": 125.0,
            }
        ],
    }


@pytest.fixture
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless Chromium, isolated (own profile) and quiet (no background network)."""
    for needed in (CHROMIUM, CHROMEDRIVER):
        if not os.access(needed, os.X_OK):
            pytest.fail(f"{needed} is missing: apt-get install -y chromium chromium-driver")
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def status_site(tmp_path: Path) -> Iterator[Callable[[dict], str]]:
    """Factory: serve the status site over the given fake data; returns its base URL."""
    processes: list[subprocess.Popen] = []

    def serve(data: dict) -> str:
        data_file = tmp_path / f"status-{len(processes)}.json"
        data_file.write_text(json.dumps(data))
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(data_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        processes.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""  # the port, once listening
        if not line.strip().isdigit():
            proc.kill()
            _, err = proc.communicate(timeout=WAIT_S)
            pytest.fail(f"status server did not start: {line!r}\n{err}")
        return f"http://127.0.0.1:{int(line)}"

    yield serve
    for proc in processes:
        proc.terminate()
        try:
            proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(driver: WebDriver, what: str, check: Callable[[WebDriver], Any]) -> Any:
    """Wait for ``check`` to give something truthy; on timeout say what was awaited."""

    def attempt(d: WebDriver) -> Any:
        try:
            return check(d)
        except (WebDriverException, IndexError, KeyError):
            return None  # the page is still (re)drawing

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(attempt)
    except WebDriverException as e:
        status = driver.find_element(By.ID, "status").text
        raise AssertionError(f"timed out waiting for {what}; page status: {status!r}") from e


def test_dashboard_shows_mismatch_and_slow_query(
    browser: WebDriver, status_site: Callable[[dict], str]
) -> None:
    browser.get(status_site(sample_data()) + "/")
    assert browser.title == "Twinkly"

    group = wait_for(
        browser,
        "the mismatch group",
        lambda d: d.find_element(By.CSS_SELECTOR, "#mismatches .group"),
    )
    # The statement is shown as text, "<b>" included: it did not become markup.
    assert group.find_element(By.CSS_SELECTOR, ".statement").text == MISMATCH_STATEMENT
    assert group.find_elements(By.CSS_SELECTOR, ".statement b") == []
    assert "rows differ in column b" in group.find_element(By.CSS_SELECTOR, ".reason").text
    row = group.find_element(By.CSS_SELECTOR, "table.differences tr.difference")
    truth = row.find_element(By.CSS_SELECTOR, "td.truth")
    target = row.find_element(By.CSS_SELECTOR, "td.target")
    assert "truth-value" in truth.text and "target-value" not in truth.text
    assert "target-value" in target.text and "truth-value" not in target.text
    assert [c.text for c in truth.find_elements(By.CSS_SELECTOR, ".cell.diff")] == ["truth-value"]
    assert "SELECT 2" in group.find_element(By.CSS_SELECTOR, "table.sides").text

    wait_for(
        browser,
        "the slow query with its insights",
        lambda d: d.find_element(By.CSS_SELECTOR, "#slow .slow-query li.insight.llm"),
    )
    slow = browser.find_element(By.CSS_SELECTOR, "#slow .slow-query")
    assert slow.find_element(By.CSS_SELECTOR, ".statement").text == SLOW_STATEMENT
    assert RATIO_TEXT in slow.find_element(By.CSS_SELECTOR, ".ratio").text
    insights = slow.find_element(By.CSS_SELECTOR, "ul.insights").text
    assert HEURISTIC in insights and LLM_TEXT in insights
    summary = slow.find_element(By.CSS_SELECTOR, "tr.plan-summary")
    assert summary.find_element(By.CSS_SELECTOR, "td.truth").text == "Index Scan on big"
    assert summary.find_element(By.CSS_SELECTOR, "td.target").text == "Seq Scan on big"
    elapsed = slow.find_element(By.CSS_SELECTOR, "tr.elapsed")
    assert elapsed.find_element(By.CSS_SELECTOR, "td.truth").text == "2.00"
    assert elapsed.find_element(By.CSS_SELECTOR, "td.target").text == "250"

    # A plan opens, and stays open across the next polls (unchanged data is not redrawn).
    plan = slow.find_element(By.CSS_SELECTOR, "details.plan.target")
    plan.find_element(By.TAG_NAME, "summary").click()
    assert '"Seq Scan"' in plan.find_element(By.TAG_NAME, "pre").text
    first_update = browser.find_element(By.ID, "status").text
    wait_for(
        browser, "a second poll", lambda d: d.find_element(By.ID, "status").text != first_update
    )
    reopened = browser.find_element(By.CSS_SELECTOR, "#slow details.plan.target")
    assert reopened.get_attribute("open") is not None

    totals = browser.find_element(By.ID, "totals")
    assert totals.find_element(By.CSS_SELECTOR, '[data-key="statements"] .value').text == "7"
    assert (
        totals.find_element(By.CSS_SELECTOR, '[data-key="outcome:mismatched"] .value').text == "1"
    )
    fingerprint = browser.find_element(By.CSS_SELECTOR, "#fingerprints tr.fingerprint")
    assert RATIO_TEXT in fingerprint.text and SLOW_STATEMENT in fingerprint.text
    assert "cannot reach" not in browser.find_element(By.ID, "status").text


@pytest.mark.backends
def test_dashboard_shows_a_mismatch_made_through_the_proxy(
    browser: WebDriver, start_proxy: Callable[..., Any]
) -> None:
    """The whole way: a real proxy in front of PostgreSQL 15 and 18, a value changed on the
    target only, a SELECT through the proxy, and the page showing both values."""
    import psycopg
    from pgwire import free_port

    http_port = free_port()
    proxy = start_proxy(
        "dashboard", extra=f"monitoring.http {{ enabled = true, port = {http_port} }}"
    )
    for dsn in (proxy.truth_dsn, proxy.target_dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("drop table if exists dash_t")
            conn.execute("create table dash_t (id int, v text)")
            conn.execute("insert into dash_t values (1, 'same'), (2, 'truth-value')")
    with psycopg.connect(proxy.target_dsn, autocommit=True) as conn:
        conn.execute("update dash_t set v = 'target-value' where id = 2")
    statement = "select id, v from dash_t where id = 2"
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute(statement).fetchall() == [(2, "truth-value")]
    browser.get(f"http://127.0.0.1:{http_port}/")
    group = wait_for(
        browser,
        "the mismatch made through the proxy",
        lambda d: next(
            g
            for g in d.find_elements(By.CSS_SELECTOR, "#mismatches .group")
            if g.find_element(By.CSS_SELECTOR, "pre.statement").text == statement
        ),
    )
    difference = group.find_element(By.CSS_SELECTOR, "table.differences tr.difference")
    assert "truth-value" in difference.find_element(By.CSS_SELECTOR, "td.truth").text
    assert "target-value" in difference.find_element(By.CSS_SELECTOR, "td.target").text
    assert "result_mismatch" in group.find_element(By.CSS_SELECTOR, ".kind").text


@pytest.mark.backends
def test_dashboard_shows_a_slow_statement_made_through_the_proxy(
    browser: WebDriver, start_proxy: Callable[..., Any]
) -> None:
    """A real slow_query (an index on the truth only) and a real LLM insight from a local
    endpoint, as the page shows them: the ratio, both plans, the causes."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import psycopg
    from pgwire import free_port

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"choices": [{"message": {"content": "Add the index."}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    http_port = free_port()
    url = f"http://127.0.0.1:{endpoint.server_address[1]}/v1/chat/completions"
    try:
        proxy = start_proxy(
            "dashboard-slow",
            extra=(
                f"monitoring.http {{ enabled = true, port = {http_port} }}\n"
                "comparison { slow-query-min-ms = 20,"
                f' ai {{ enabled = true, endpoint = "{url}", model = "m" }} }}'
            ),
        )
        for dsn in (proxy.truth_dsn, proxy.target_dsn):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("drop table if exists dash_orders")
                conn.execute("create table dash_orders (id int, customer int)")
                conn.execute(
                    "insert into dash_orders select i, i % 20000 from generate_series(1, 2000000) i"
                )
                conn.execute("alter table dash_orders set (parallel_workers = 0)")
        with psycopg.connect(proxy.truth_dsn, autocommit=True) as conn:
            conn.execute("create index dash_orders_customer on dash_orders (customer)")
        for dsn in (proxy.truth_dsn, proxy.target_dsn):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("vacuum analyze dash_orders")
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute("select count(*) from dash_orders where customer = 7").fetchall()
        browser.get(f"http://127.0.0.1:{http_port}/")
        slow = wait_for(
            browser,
            "the slow statement made through the proxy",
            lambda d: d.find_element(By.CSS_SELECTOR, "#slow .slow-query"),
        )
        assert "dash_orders" in slow.find_element(By.CSS_SELECTOR, "pre.statement").text
        plans = slow.find_element(By.CSS_SELECTOR, "tr.plan-summary")
        assert "Seq Scan on dash_orders" in plans.find_element(By.CSS_SELECTOR, "td.target").text
        assert "dash_orders_customer" in plans.find_element(By.CSS_SELECTOR, "td.truth").text
        heuristic = slow.find_element(By.CSS_SELECTOR, "li.insight.heuristic").text
        assert "no index on dash_orders(customer)" in heuristic
        llm = wait_for(
            browser,
            "the LLM's insight",
            lambda d: d.find_element(By.CSS_SELECTOR, "#slow li.insight.llm"),
        )
        assert "Add the index." in llm.text
    finally:
        endpoint.shutdown()

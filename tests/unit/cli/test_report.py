"""``twinkly report FILE``: the summary of a JSON-lines report, as text and as JSON."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from twinkly import __main__ as entry
from twinkly.cli import report as cli
from twinkly.report.events import encode_event, make_event
from twinkly.report.sink import JsonLinesSink

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20.000Z


def ev(
    kind: str, minute: int, fingerprint: str | None, statement: str = "", **kw: Any
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "session": 1,
        "statement": statement or f"SELECT /* {fingerprint} */ 1",
        "fingerprint": fingerprint,
        "truth": {"label": "pg15", "rows": 3, "tag": "SELECT 3", "elapsed_ms": 1.5},
        "target": {"label": "pg18", "rows": 2, "tag": "SELECT 2", "elapsed_ms": 2.0},
    }
    fields.update(kw)
    return make_event(kind, now=T0 + 60 * minute, **fields)


DIFFS = [{"row": i, "column": "x", "truth": f"t{i}", "target": f"g{i}"} for i in range(7)]


def write_report(path: Path) -> None:
    events = [
        ev("noise", 0, "fa", statement="SELECT now(),\n  a FROM t"),  # noise first
        ev("result_mismatch", 1, "fa", statement="SELECT a\nFROM t", differences=DIFFS),
        ev("result_mismatch", 2, "fa"),
        ev("result_mismatch", 3, "fa"),
        ev(
            "tag_mismatch",
            4,
            "fb",
            statement="UPDATE t SET a = 1",
            differences=[["UPDATE 3", "UPDATE 2"]],
        ),
        *(ev("noise", 5 + i, "fc") for i in range(5)),
        ev(
            "backend_unavailable",
            11,
            None,
            statement="SELECT 1",
            target={"label": "pg18", "sqlstate": "08006", "message": "connection lost"},
            reason="target closed the connection",
        ),
    ]
    with open(path, "wb") as f:
        f.write(b"this is not json\n")
        for n, e in enumerate(events):
            f.write(encode_event(e))
            if n == 3:
                f.write(b"[1, 2]\n\n")  # JSON but not an event; a blank line is ignored
        f.write(b'{"no": "kind"}\n')
        f.write(b'{"kind": "noise", "time": "yesterday"}\n')
        f.write(b'{"id": "01HZ", "kind": "result_mis')  # cut short by a crash


class ReportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_report(self.path)

    def run_report(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = entry.main(["report", *args], stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def summary(self, *args: str) -> dict[str, Any]:
        code, out, err = self.run_report(str(self.path), "--json", *args)
        self.assertEqual((code, err), (0, ""))
        return json.loads(out)

    def test_json_summary(self) -> None:
        s = self.summary()
        self.assertEqual(s["malformed_lines"], 5)
        self.assertEqual(s["events"], 11)
        self.assertEqual(
            s["totals"],
            {"result_mismatch": 3, "tag_mismatch": 1, "backend_unavailable": 1, "noise": 6},
        )
        self.assertEqual(s["fingerprints"], 4)
        groups = s["groups"]
        # most problems first; ties by size then name; noise-only groups last
        self.assertEqual([g["fingerprint"] for g in groups], ["fa", "(none)", "fb", "fc"])
        fa = groups[0]
        self.assertEqual(fa["kinds"], {"result_mismatch": 3, "noise": 1})
        self.assertEqual((fa["events"], fa["problems"]), (4, 3))
        self.assertEqual(fa["first"], "2023-11-14T22:13:20.000Z")
        self.assertEqual(fa["last"], "2023-11-14T22:16:20.000Z")
        example = fa["example"]  # the first real problem, not the noise before it
        self.assertEqual(example["kind"], "result_mismatch")
        self.assertEqual(example["statement"], "SELECT a\nFROM t")
        self.assertEqual(example["differences"], DIFFS[:5])
        self.assertEqual(example["differences_total"], 7)
        self.assertEqual(example["truth"]["tag"], "SELECT 3")
        self.assertEqual(groups[3]["example"]["kind"], "noise")

    def test_text_summary(self) -> None:
        code, out, err = self.run_report(str(self.path))
        self.assertEqual((code, err), (0, ""))
        self.assertIn("11 events from 16 lines", out)
        self.assertIn("Totals by kind:", out)
        totals = out.split("Totals by kind:")[1].split("Fingerprints")[0].split()
        self.assertEqual(
            totals,
            ["result_mismatch", "3", "tag_mismatch", "1", "backend_unavailable", "1", "noise", "6"],
        )
        order = [out.index(f"#{n} {fp}:") for n, fp in enumerate(["fa", "(none)", "fb", "fc"], 1)]
        self.assertEqual(order, sorted(order))
        self.assertIn("#1 fa: 4 events (result_mismatch 3, noise 1)", out)
        self.assertIn("first 2023-11-14T22:13:20.000Z   last 2023-11-14T22:16:20.000Z", out)
        self.assertIn("statement: SELECT a FROM t", out)
        self.assertIn("differences (5 of 7), truth | target:", out)
        self.assertIn("row=0 column=x  t0 | g0", out)
        self.assertIn("row=4 column=x  t4 | g4", out)
        self.assertNotIn("t5 | g5", out)
        self.assertIn("UPDATE 3 | UPDATE 2", out)
        self.assertIn("truth  (pg15) rows=3 tag='SELECT 3' 1.5 ms", out)
        self.assertIn("target (pg18) error 08006: connection lost", out)
        self.assertIn("reason: target closed the connection", out)
        self.assertTrue(out.rstrip().endswith("5 malformed lines skipped"))

    def test_since(self) -> None:
        s = self.summary("--since", "2023-11-14T22:15:20Z")  # minute 2 onwards
        self.assertEqual(s["events"], 9)
        self.assertEqual(s["filtered_out"], 2)
        self.assertEqual(s["filters"]["since"], "2023-11-14T22:15:20.000Z")
        fa = s["groups"][0]
        self.assertEqual(fa["kinds"], {"result_mismatch": 2})
        self.assertEqual(fa["first"], "2023-11-14T22:15:20.000Z")
        # a time without a zone is UTC; other zones are converted
        self.assertEqual(self.summary("--since", "2023-11-14T22:15:20")["events"], 9)
        self.assertEqual(self.summary("--since", "2023-11-14T23:15:20+01:00")["events"], 9)

    def test_kind(self) -> None:
        s = self.summary("--kind", "tag_mismatch", "--kind", "backend_unavailable")
        self.assertEqual(s["totals"], {"tag_mismatch": 1, "backend_unavailable": 1})
        self.assertEqual([g["fingerprint"] for g in s["groups"]], ["(none)", "fb"])
        self.assertEqual(s["filters"]["kinds"], ["tag_mismatch", "backend_unavailable"])

    def test_top(self) -> None:
        s = self.summary("--top", "1")
        self.assertEqual([g["fingerprint"] for g in s["groups"]], ["fa"])
        self.assertEqual(s["fingerprints"], 4)
        self.assertEqual(self.run_report(str(self.path), "--top", "2")[0], 0)
        _, out, _ = self.run_report(str(self.path), "--top", "2")
        self.assertIn("Fingerprints (2 of 4", out)
        self.assertNotIn("#3", out)

    def test_missing_file(self) -> None:
        missing = str(self.path) + ".absent"
        code, out, err = self.run_report(missing)
        self.assertEqual((code, out), (2, ""))
        self.assertIn(f"no such file: {missing}", err)

    def test_bad_arguments(self) -> None:
        err = io.StringIO()
        self.patch(cli.sys, "stderr", err)  # argparse writes its errors there
        self.assertEqual(cli.main([str(self.path), "--kind", "nonsense"]), 2)
        self.assertEqual(cli.main([str(self.path), "--since", "last tuesday"]), 2)
        self.assertIn("not an ISO 8601 time", err.getvalue())

    def test_report_main_alone(self) -> None:
        out = io.StringIO()
        self.assertEqual(cli.main([str(self.path), "--json"], stdout=out), 0)
        self.assertEqual(json.loads(out.getvalue())["events"], 11)

    def test_over_long_line_skipped_unread(self) -> None:
        summary = cli.Summary()
        with open(self.path, "ab") as f:
            f.write(b"\n" + encode_event(ev("noise", 20, "fd", statement="x" * 5_000)))
            f.write(encode_event(ev("noise", 21, "fd")))
        summary.read(self.path, max_line=1_000)
        self.assertEqual(summary.malformed, 6)
        self.assertEqual(summary.groups["fd"].total, 1)

    def test_empty_file(self) -> None:
        self.path.write_bytes(b"")
        code, out, _ = self.run_report(str(self.path))
        self.assertEqual(code, 0)
        self.assertIn("(no events)", out)
        self.assertEqual(self.summary()["groups"], [])


class EntryPointTests(SynchronousTestCase):
    def test_no_arguments_lists_the_commands(self) -> None:
        err = io.StringIO()
        self.assertEqual(entry.main([], stderr=err), 2)
        usage = err.getvalue()
        self.assertIn("usage: twinkly", usage)
        self.assertIn("report", usage)

    def test_help(self) -> None:
        out = io.StringIO()
        self.patch(entry.sys, "stdout", out)
        self.assertEqual(entry.main(["--help"]), 0)
        self.assertIn("report", out.getvalue())


class SinkToReportTests(SynchronousTestCase):
    def test_what_the_sink_writes_the_report_reads(self) -> None:
        path = Path(self.mktemp())
        fired, lock = threading.Event(), threading.Lock()

        def call_in_reactor(f: Any, *args: Any, **kwargs: Any) -> None:
            with lock:  # the writer thread fires close() only once the test has its callback
                f(*args, **kwargs)

        sink = JsonLinesSink(path, None, call_in_reactor=call_in_reactor)
        for minute in range(3):
            sink.emit(ev("column_mismatch", minute, "fz", parameters=[b"\x01"]))
        with lock:
            sink.close().addBoth(lambda _: fired.set())
        self.assertTrue(fired.wait(10))
        out = io.StringIO()
        self.assertEqual(entry.main(["report", str(path), "--json"], stdout=out), 0)
        s = json.loads(out.getvalue())
        self.assertEqual((s["events"], s["malformed_lines"]), (3, 0))
        self.assertEqual(s["groups"][0]["example"]["parameters"], ["\\x01"])


class SlowQueryReportTests(SynchronousTestCase):
    def test_slow_query_shows_both_plans_the_causes_and_the_later_insight(self) -> None:
        path = Path(self.mktemp())
        slow = make_event(
            "slow_query",
            now=1_700_000_000,
            session=1,
            statement="select count(*) from orders where customer_id = 42",
            fingerprint="fs",
            truth={"label": "pg15", "elapsed_ms": 1.0},
            target={"label": "pg18", "elapsed_ms": 90.0},
            reason="pg18 took 90.0 ms, pg15 1.0 ms",
            plan_summary={"truth": "Index Scan using i on orders", "target": "Seq Scan on orders"},
            insights=[{"kind": "missing_index", "message": "no index on orders(customer_id)?"}],
        )
        insight = make_event(
            "insight",
            now=1_700_000_001,
            session=1,
            statement=None,
            fingerprint="fs",
            truth=None,
            target=None,
            event=slow["id"],
            provider="llm",
            answer={"provider": "llm", "text": "Create the index."},
        )
        path.write_bytes(encode_event(slow) + encode_event(insight))
        out = io.StringIO()
        self.assertEqual(entry.main(["report", str(path)], stdout=out, stderr=io.StringIO()), 0)
        text = out.getvalue()
        self.assertIn("example " + slow["id"] + " (slow_query)", text)  # never the insight
        self.assertIn("truth plan: Index Scan using i on orders", text)
        self.assertIn("target plan: Seq Scan on orders", text)
        self.assertIn("likely cause: no index on orders(customer_id)?", text)
        self.assertIn("insight (llm) Create the index.", text)
        summary = io.StringIO()
        entry.main(["report", str(path), "--json"], stdout=summary, stderr=io.StringIO())
        (group,) = json.loads(summary.getvalue())["groups"]
        self.assertEqual(group["problems"], 1)  # the insight explains, it is no problem


class DifferingValuesTests(SynchronousTestCase):
    """Rows are cut at a cell's width; each differing column's values are shown whole."""

    TRUTH = ["7", "n7", "2026-12-07 10:11:12.123456+00", "a" * 60]
    TARGET = ["7", "n7", "2026-12-07 10:11:12.123789+00", "a" * 60]

    def test_the_values_of_the_differing_columns_in_full(self) -> None:
        difference = {"kind": "value", "position": 3, "truth": self.TRUTH,
                      "target": self.TARGET, "columns": ["ts"], "positions": [2]}  # fmt: skip
        lines = cli._side_by_side([difference])
        self.assertEqual(len(lines), 2)
        self.assertIn("...", lines[0])  # the rows themselves are cut
        self.assertEqual(
            lines[1].strip(),
            '* ts: "2026-12-07 10:11:12.123456+00" | "2026-12-07 10:11:12.123789+00"',
        )
        self.assertNotIn("positions", lines[0])

    def test_events_without_positions_and_bounded_values(self) -> None:
        truth, target = [*self.TRUTH[:3], "x" * 5000], [*self.TARGET[:3], "y" * 5000]
        difference = {"kind": "value", "truth": truth, "target": target, "columns": ["ts", "v"]}
        lines = cli._side_by_side([difference])
        self.assertTrue(lines[1].strip().startswith('* ts: "2026-12-07 10:11:12.123456+00" |'))
        self.assertTrue(lines[2].strip().startswith('* v: "xxx'))
        self.assertLess(len(lines[2]), 2 * cli.TEXT_VALUE + 20)
        difference = {"kind": "value", "truth": truth, "target": target, "columns": ["v"]}
        self.assertIn("* #3:", cli._side_by_side([difference])[1])

    def test_missing_rows_have_no_values_lines(self) -> None:
        difference = {"kind": "missing_on_target", "truth": self.TRUTH, "target": None,
                      "columns": []}  # fmt: skip
        self.assertEqual(len(cli._side_by_side([difference])), 1)

    def test_in_the_text_report(self) -> None:
        event = ev("result_mismatch", 1, "fz", differences=[
            {"kind": "value", "position": 0, "truth": self.TRUTH, "target": self.TARGET,
             "columns": ["ts"], "positions": [2]}])  # fmt: skip
        path = Path(self.mktemp())
        path.write_bytes(encode_event(event))
        out = io.StringIO()
        self.assertEqual(cli.main([str(path)], stdout=out), 0)
        self.assertIn('* ts: "2026-12-07 10:11:12.123456+00" | "2026-12-07', out.getvalue())

"""The matched lane settles a pair only as the comparator would have settled it.

Every scenario runs twice, each time from a fresh monitor: once through the comparator
alone, once through a lane in front of it. What a user can see afterwards (outcome
counts, events, the latency book, the comparator's transaction state) must be the same.
Each lane implementation runs with each tracker's results (the C lane hands the Python
tracker's to the comparator); the C cases are skipped when the extensions were not built.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from twinkly.compare import lane
from twinkly.compare.comparator import Comparator
from twinkly.compare.shared_state import ComparisonSettings, Monitor
from twinkly.compare.volatile import VolatileColumns
from twinkly.perf.latency import SlowQuerySettings
from twinkly.report.sink import MemorySink
from twinkly.tracking import responses
from twinkly.tracking.contexts import INTERNAL
from twinkly.wire import backend as b
from twinkly.wire.frontend import encode

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {}"


def row_description(table_oid: int, type_oid: int = 23) -> bytes:
    """A RowDescription's payload: the tracker keeps it without its header."""
    return encode(b.RowDescription((b.Column("abalance", table_oid, 3, type_oid, 4),)))[5:]


class Results:
    """Builds one tracker implementation's results."""

    def __init__(self, impl: Any) -> None:
        self.impl = impl
        self.key = 0

    def pair(self, sql: str | None = None, request: str = "Q", **fields: Any) -> tuple:
        """A pair of equal answers; ``target_<field>`` overrides the target's field."""
        self.key += 1
        context = INTERNAL if sql == "internal" else (None if sql is None else (sql, None, ()))
        made = []
        for side in ("truth", "target"):
            result = self.impl.StatementResult(request, 100.0, self.key << 20, context)
            values = {"rows": 1, "digest": 42, "tag": b"SELECT 1", "elapsed": 0.001}
            values.update({k: v for k, v in fields.items() if not k.startswith("target_")})
            if side == "target":
                values.update({k[7:]: v for k, v in fields.items() if k.startswith("target_")})
            result.finished = 100.0 + values.pop("elapsed")
            for name, value in values.items():
                setattr(result, name, value)
            made.append(result)
        return tuple(made)

    def sync(self, truth: str = "I", target: str | None = None) -> tuple:
        self.key += 1
        return (
            self.impl.SyncPoint(truth, 100.0, self.key << 20),
            self.impl.SyncPoint(target or truth, 100.0, self.key << 20),
        )


def run(steps: list[tuple], lane_type: Any, **settings: Any) -> dict:
    """Feed the pairs and sync points to a fresh comparator (behind ``lane_type`` when
    given) and return what can be seen afterwards."""
    volatile = settings.pop("volatile", None)
    slow = SlowQuerySettings(**settings.pop("slow", {}))
    monitor = Monitor(
        ComparisonSettings(slow=slow, **settings), MemorySink(), ("pg15", "pg18"),
        clock=lambda: 1000.0, volatile=volatile,
    )  # fmt: skip
    comparator = Comparator(monitor, None, None, lambda: 1000.0)
    observer = lane_type(comparator) if lane_type is not None else comparator
    for truth, target in steps:
        if isinstance(truth, (responses.PYTHON.SyncPoint, *_c_syncs())):
            observer.sync_paired(truth, target)
        else:
            observer.statements_paired(truth, target)
    events = [
        (e["kind"], re.sub(r"\d+(\.\d+)? ms", "N ms", str(e.get("reason"))))
        for e in monitor.sink.events  # type: ignore[attr-defined]
    ]
    book = monitor.latency
    return {
        "outcomes": dict(monitor.outcomes),
        "events": events,
        "latency": [
            (e.fingerprint, e.executions, e.truth.count, e.target.count, e.regressed)
            for e in book.entries.values()
        ],
        "totals": (book.truth_all.count, book.target_all.count),
        "state": (comparator._in_transaction, comparator._target_lost_transaction is None),
        "settled": getattr(observer, "settled", None),
    }


def _c_syncs() -> tuple:
    return (responses.C.SyncPoint,) if responses.C is not None else ()


class LaneCases:
    lane_type: Any
    results_impl: Any
    settles: bool = True  # whether this lane settles these results at all

    def setUp(self) -> None:
        self.r = Results(self.results_impl)

    def same(self, steps: list[tuple], **settings: Any) -> dict:
        """Assert that the lane changes nothing a user can see; return the lane's run."""
        alone = run(steps, None, **settings)
        behind = run(steps, self.lane_type, **settings)
        settled = behind.pop("settled")
        alone.pop("settled")
        self.assertEqual(alone, behind)
        behind["settled"] = settled
        return behind

    def test_equal_answers_are_settled_and_timed(self) -> None:
        steps = [self.r.pair(SELECT.format(i)) for i in range(60)]
        result = self.same(steps)
        self.assertEqual(result["outcomes"]["matched"], 60)
        self.assertEqual(result["latency"][0][1], 60)  # every execution timed
        if self.settles:
            # The first (a new fingerprint) and the regression checks (20, 36, 52) are
            # the comparator's.
            self.assertEqual(result["settled"], 56)
        else:
            self.assertEqual(result["settled"], 0)

    def test_extended_protocol_answers(self) -> None:
        sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        steps = []
        for _ in range(10):
            steps.append(self.r.pair(sql, "B", tag=None))
            steps.append(self.r.pair(sql, "DP", tag=None, rows=0, digest=0,
                                     columns=row_description(16400),
                                     target_columns=row_description(16501)))  # fmt: skip
            steps.append(self.r.pair(sql, "E", columns=row_description(16400),
                                     target_columns=row_description(16501),
                                     columns_described=True))  # fmt: skip
            steps.append(self.r.sync())
        result = self.same(steps)
        self.assertEqual(result["events"], [])
        if self.settles:
            self.assertGreater(result["settled"], 30)

    def test_differences_reach_the_comparator(self) -> None:
        steps = [self.r.pair(SELECT.format(i)) for i in range(3)] + [
            self.r.pair(SELECT.format(9), target_digest=43),
            self.r.pair(SELECT.format(9), target_rows=2),
            self.r.pair("UPDATE t SET a = 1", tag=b"UPDATE 1", target_tag=b"UPDATE 2"),
            self.r.pair(
                SELECT.format(1),
                columns=row_description(1, 23),
                target_columns=row_description(2, 20),
            ),
            self.r.pair(SELECT.format(1), target_error=b"SERROR\0C42P01\0Mboom\0\0"),
            self.r.pair(
                SELECT.format(1),
                error=b"SERROR\0C42P01\0Mboom\0\0",
                target_error=b"SERROR\0C42703\0Mboom\0\0",
            ),
        ]
        result = self.same(steps)
        kinds = [kind for kind, _ in result["events"]]
        self.assertEqual(
            kinds,
            ["result_mismatch", "result_mismatch", "tag_mismatch", "column_mismatch",
             "error_divergence", "error_divergence"],
        )  # fmt: skip

    def test_a_slow_target_writes_its_event(self) -> None:
        steps = [self.r.pair(SELECT.format(i)) for i in range(3)]
        steps.append(self.r.pair(SELECT.format(5), target_elapsed=0.5))
        result = self.same(steps)
        self.assertEqual([k for k, _ in result["events"]], ["slow_query"])

    def test_a_lost_transaction_is_followed(self) -> None:
        steps = [
            self.r.sync("T"),
            self.r.pair(
                "INSERT INTO t VALUES (1)",
                tag=b"INSERT 0 1",
                target_error=b"SERROR\0C23505\0Mdup\0\0",
            ),
            self.r.sync("T", "E"),
            self.r.pair("COMMIT", tag=b"COMMIT", target_tag=b"ROLLBACK"),
            self.r.sync("I"),
            self.r.pair(SELECT.format(1)),
            self.r.sync("I"),
        ]
        result = self.same(steps)
        self.assertIn("transaction_divergence", [k for k, _ in result["events"]])
        self.assertEqual(result["state"], (False, True))

    def test_transaction_status_changes_reach_the_comparator(self) -> None:
        steps = [self.r.sync("I"), self.r.sync("T"), self.r.sync("T"), self.r.sync("I")]
        result = self.same(steps)
        self.assertEqual(result["state"], (False, True))
        steps = [self.r.sync("I"), self.r.sync("T")]
        self.assertEqual(self.same(steps)["state"], (True, True))

    def test_internal_statements_are_ignored(self) -> None:
        result = self.same([self.r.pair("internal", target_digest=1)])
        self.assertEqual(result["events"], [])

    def test_sampling_and_exclusions_leave_everything_to_the_comparator(self) -> None:
        steps = [self.r.pair(SELECT.format(i)) for i in range(5)]
        result = self.same(steps, sample_rate=0.999999)
        self.assertEqual(result["settled"], 0)
        result = self.same(steps, exclude_patterns=(re.compile("pgbench"),))
        self.assertEqual(result["settled"], 0)
        self.assertEqual(result["outcomes"]["excluded"], 5)

    def test_a_write_teaches_the_volatile_history(self) -> None:
        volatile = VolatileColumns(None, lambda *a, **k: None, lambda: 1000.0)
        steps = [self.r.pair("INSERT INTO t VALUES (1)", tag=b"INSERT 0 1") for _ in range(3)]
        result = self.same(steps, volatile=volatile, slow={"enabled": False})
        if self.settles:
            self.assertEqual(result["settled"], 0)  # each write goes to the comparator

    def test_untimed_comparison(self) -> None:
        steps = [self.r.pair(SELECT.format(i)) for i in range(5)]
        result = self.same(steps, slow={"enabled": False})
        if self.settles:
            self.assertEqual(result["settled"], 5)  # no timing: nothing to learn first


class PythonLaneOnPythonResults(LaneCases, SynchronousTestCase):
    lane_type = lane.PYTHON
    results_impl = responses.PYTHON


class PythonLaneOnCResults(LaneCases, SynchronousTestCase):
    lane_type = lane.PYTHON
    results_impl = responses.C
    if responses.C is None:
        skip = "the C tracker was not built"


class CLaneOnCResults(LaneCases, SynchronousTestCase):
    lane_type = lane.C
    results_impl = responses.C
    if lane.C is None:
        skip = "the C lane was not built"


class CLaneOnPythonResults(LaneCases, SynchronousTestCase):
    """The C lane settles only the C tracker's results; others are the comparator's."""

    lane_type = lane.C
    results_impl = responses.PYTHON
    settles = False
    if lane.C is None:
        skip = "the C lane was not built"


class SelectionTests(SynchronousTestCase):
    def test_the_lane_runs_with_its_tracker(self) -> None:
        expected = lane.C if responses.IMPLEMENTATION == "c" and lane.C else lane.PYTHON
        self.assertIs(lane.MatchedLane, expected)

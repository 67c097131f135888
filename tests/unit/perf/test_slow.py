"""EXPLAIN on side connections and the slow_query events built from it, without a
network: the side connection is a fake that records what it is sent."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twinkly.config.schema import BackendConfig, ExplainConfig
from twinkly.perf.explain import Explainer, ExplainRequest, ExplainResult
from twinkly.perf.insight import IInsightProvider
from twinkly.perf.slow import SlowQueryReporter
from twinkly.proxy.backend import BackendError, SideConnection
from twinkly.wire import frontend as f
from twinkly.wire.framing import MessageFramer

TRUTH = BackendConfig("postgresql", "pg15", port=1)
TARGET = BackendConfig("yugabytedb", "pg18", port=2)
PLAN = '[{"Plan": {"Node Type": "Seq Scan", "Relation Name": "orders", "Plan Rows": 5}}]'


class FakeSide:
    """A logged-in side connection: answers every query with one JSON plan cell, and
    the catalog check with ``unsafe`` relations."""

    def __init__(self, fail_on: str | None = None, unsafe: int = 0, hang: bool = False) -> None:
        self.sent: list[object] = []
        self.terminated = False
        self.fail_on = fail_on
        self.unsafe = unsafe
        self.hang = hang
        self.pending: defer.Deferred | None = None
        self.transport = self  # .connected and abortConnection, as a transport's
        self.connected = True

    @property
    def idle(self) -> bool:
        return self.pending is None or self.pending.called

    def run_query(self, sql: str) -> defer.Deferred:
        return self.run_messages(f.encode(f.Query(sql)))

    def run_messages(self, data: bytes) -> defer.Deferred:
        """Records a simple query as its SQL, anything else as the decoded messages."""
        messages = [f.decode_frontend(t, p) for t, p in MessageFramer().feed(data)]
        simple = len(messages) == 1 and isinstance(messages[0], f.Query)
        sql = messages[0].sql if simple else "EXPLAIN"  # type: ignore[attr-defined]
        self.sent.append(sql if simple else messages)
        if self.fail_on and self.fail_on in sql:
            return defer.fail(BackendError("pg15: canceling statement", "57014"))
        if "pg_class" in sql:
            return defer.succeed([[str(self.unsafe)]])
        if not sql.startswith("EXPLAIN"):
            return defer.succeed([])
        if self.hang:
            self.pending = defer.Deferred()
            return self.pending
        return defer.succeed([[PLAN]])

    def abortConnection(self) -> None:
        self.connected = False
        if self.pending is not None and not self.pending.called:
            self.pending.errback(BackendError("pg15 (127.0.0.1:1) closed the connection"))

    def terminate(self) -> None:
        self.terminated = True


def bind(*values: bytes, formats: tuple[int, ...] = (1,)) -> bytes:
    return f.Bind("portal", "stmt", formats, values, (1,)).payload()


class ExplainerTests(SynchronousTestCase):
    def explainer(self, side: FakeSide | None = None, **settings: object) -> Explainer:
        self.side = side or FakeSide()
        self.connected: list[dict] = []

        def connect(config: BackendConfig, parameters: dict) -> defer.Deferred:
            self.connected.append(parameters)
            return defer.succeed(self.side)

        self.clock = task.Clock()
        return Explainer(ExplainConfig(**settings), connect, self.clock)  # type: ignore[arg-type]

    def explain(self, explainer: Explainer, request: ExplainRequest) -> ExplainResult:
        return self.successResultOf(explainer.explain(TRUTH, {"user": "u"}, request))

    def test_read_only_select_is_analyzed_in_a_read_only_transaction(self) -> None:
        explainer = self.explainer(statement_timeout=2.5)
        result = self.explain(
            explainer,
            ExplainRequest("select count(*) from orders", "select", True, relations=(("Orders",),)),
        )
        self.assertTrue(result.analyzed)
        self.assertEqual(result.plan[0]["Plan"]["Node Type"], "Seq Scan")  # type: ignore[index]
        tables, begin, timeout, locks, explain, rollback = self.side.sent
        self.assertIn("""'"Orders"'""", tables)  # checked in the catalog, exactly as named
        self.assertEqual(begin, "BEGIN READ ONLY")
        self.assertEqual(timeout, "SET LOCAL statement_timeout = 2500")
        self.assertEqual(locks, "SET LOCAL lock_timeout = 1000")
        self.assertEqual(
            explain, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) select count(*) from orders"
        )
        self.assertEqual(rollback, "ROLLBACK")
        self.assertTrue(self.side.terminated)
        self.assertEqual(self.connected, [{"user": "u", "application_name": "twinkly-explain"}])

    def test_anything_else_is_only_planned(self) -> None:
        for request in (
            ExplainRequest("update orders set n = 1", "update", False),
            ExplainRequest("select bump()", "select", False),  # not provably read-only
        ):
            explainer = self.explainer()
            result = self.explain(explainer, request)
            self.assertFalse(result.analyzed)
            self.assertEqual(self.side.sent[3], f"EXPLAIN (FORMAT JSON) {request.sql}")

    def test_a_view_or_row_security_means_no_analyze(self) -> None:
        explainer = self.explainer(FakeSide(unsafe=1))
        request = ExplainRequest("select * from v", "select", True, relations=(("v",),))
        result = self.explain(explainer, request)
        self.assertFalse(result.analyzed)
        self.assertEqual(self.side.sent[4], "EXPLAIN (FORMAT JSON) select * from v")

    def test_a_side_connection_that_never_answers_is_dropped(self) -> None:
        explainer = self.explainer(FakeSide(hang=True), statement_timeout=1.0)
        waiting = explainer.explain(TRUTH, {}, ExplainRequest("select 1", "select", True))
        self.clock.advance(2.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.2)  # statement_timeout and the margin are over
        result = self.successResultOf(waiting)
        self.assertEqual(
            result.error, "no plan within 3 s (Twinkly's own limit); connection dropped"
        )
        self.assertTrue(self.side.terminated)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_catalog_check_that_fails_still_gives_a_plain_plan(self) -> None:
        explainer = self.explainer(FakeSide(fail_on="pg_class"))
        request = ExplainRequest("select * from t", "select", True, relations=(("t",),))
        result = self.explain(explainer, request)
        self.assertEqual((result.analyzed, result.error), (False, None))
        self.assertEqual(self.side.sent[1], "BEGIN READ ONLY")  # after the check, not before

    def test_another_databases_table_is_never_analyzed(self) -> None:
        explainer = self.explainer()
        request = ExplainRequest(
            "select * from db.s.t", "select", True, relations=(("db", "s", "t"),)
        )
        self.assertFalse(self.explain(explainer, request).analyzed)

    def test_analyze_can_be_switched_off(self) -> None:
        explainer = self.explainer(analyze=False)
        result = self.explain(explainer, ExplainRequest("select 1", "select", True))
        self.assertFalse(result.analyzed)

    def test_parameters_are_bound_as_the_client_bound_them(self) -> None:
        explainer = self.explainer()
        request = ExplainRequest(
            "select * from t where id = $1 and v = $2",
            "select",
            True,
            bind=bind(b"\x00\x07", b"x", formats=(1, 0)),
            parameter_types=(21, 25),
            relations=(("public", "t"),),
        )
        self.explain(explainer, request)
        parse, bound, execute, sync = self.side.sent[4]  # type: ignore[misc]
        self.assertIn("""'"public"."t"'""", self.side.sent[0])  # type: ignore[operator]
        self.assertEqual(
            parse,
            f.Parse("", "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + request.sql, (21, 25)),
        )
        # Unnamed portal and statement; the client's formats and values; text results.
        self.assertEqual(bound, f.Bind("", "", (1, 0), (b"\x00\x07", b"x"), ()))
        self.assertEqual((execute, sync), (f.Execute("", 0), f.Sync()))

    def test_statements_without_a_plan_never_connect(self) -> None:
        explainer = self.explainer()
        result = self.explain(explainer, ExplainRequest("create table t (a int)", "ddl", False))
        self.assertIn("has no plan", result.error)  # type: ignore[arg-type]
        self.assertEqual(self.connected, [])

    def test_errors_become_results_and_the_transaction_is_still_rolled_back(self) -> None:
        explainer = self.explainer(FakeSide(fail_on="EXPLAIN"))
        result = self.explain(explainer, ExplainRequest("select 1", "select", True))
        self.assertIsNone(result.plan)
        self.assertIn("canceling statement", result.error)  # type: ignore[arg-type]
        self.assertEqual(self.side.sent[-1], "ROLLBACK")
        self.assertTrue(self.side.terminated)
        self.assertEqual(explainer.failed, 1)

    def test_a_connection_that_fails_is_a_result_too(self) -> None:
        def connect(config: BackendConfig, parameters: dict) -> defer.Deferred:
            return defer.fail(BackendError("cannot connect to pg18 (127.0.0.1:2)"))

        explainer = Explainer(ExplainConfig(), connect, task.Clock())
        result = self.successResultOf(
            explainer.explain(TARGET, {}, ExplainRequest("select 1", "select", True))
        )
        self.assertEqual(result.error, "cannot connect to pg18 (127.0.0.1:2)")

    def test_concurrency_and_queue_are_bounded(self) -> None:
        pending: list[defer.Deferred] = []

        def connect(config: BackendConfig, parameters: dict) -> defer.Deferred:
            pending.append(defer.Deferred())
            return pending[-1]

        explainer = Explainer(ExplainConfig(max_concurrent=1, max_queued=2), connect, task.Clock())
        request = ExplainRequest("select 1", "select", True)
        results = [explainer.explain(TRUTH, {}, request) for _ in range(4)]
        self.assertEqual(len(pending), 1)  # one at a time
        self.assertEqual(explainer.dropped, 1)  # 1 running, 2 queued, the 4th refused
        self.assertIn("too many plans queued", self.successResultOf(results[3]).error)
        side = FakeSide()
        pending[0].callback(side)
        self.assertEqual(len(pending), 2)  # the next one starts when a slot frees
        self.successResultOf(results[0])


@implementer(IInsightProvider)
class FakeProvider:
    name = "llm"

    def __init__(self, answer: dict | None) -> None:
        self.answer = answer
        self.asked: list[dict] = []
        self.pending: defer.Deferred = defer.Deferred()

    def insight(self, request: dict) -> defer.Deferred:
        self.asked.append(request)
        return self.pending


class FakeExplainer:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.results: dict[str, defer.Deferred] = {}

    def explain(self, config: BackendConfig, parameters: dict, request: ExplainRequest):
        self.calls.append((config.label, request))
        self.results[config.label] = defer.Deferred()
        return self.results[config.label]


def plan(node: dict) -> list:
    return [{"Plan": node}]


INDEX = plan(
    {
        "Node Type": "Index Scan",
        "Relation Name": "orders",
        "Alias": "orders",
        "Index Name": "orders_customer_idx",
        "Index Cond": "(customer_id = 42)",
    }
)
SEQ = plan({"Node Type": "Seq Scan", "Relation Name": "orders", "Alias": "orders"})


class ReporterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict] = []
        self.explainer = FakeExplainer()
        self.provider = FakeProvider({"provider": "llm", "text": "add the index"})
        self.reporter = SlowQueryReporter(
            self.events.append,
            lambda: 1_700_000_000.0,
            self.explainer,  # type: ignore[arg-type]
            [self.provider],
        )

    def fields(self) -> dict:
        return {
            "session": 7,
            "statement": "select * from orders where customer_id = 42",
            "fingerprint": "abc",
            "truth": {"label": "pg15", "elapsed_ms": 1.0},
            "target": {"label": "pg18", "elapsed_ms": 90.0},
            "ratio": 90.0,
        }

    def report(self) -> defer.Deferred:
        sides = (SideConnection(TRUTH, {}), SideConnection(TARGET, {}))
        request = ExplainRequest(self.fields()["statement"], "select", True)
        return self.reporter.slow_query(
            self.fields(), sides, request, "select * from orders where customer_id = $1"
        )

    def test_the_event_waits_for_both_plans_and_names_the_cause(self) -> None:
        written = self.report()
        self.assertEqual([label for label, _ in self.explainer.calls], ["pg15", "pg18"])
        self.assertNoResult(written)
        self.explainer.results["pg15"].callback(ExplainResult(INDEX, analyzed=True))
        self.assertEqual(self.events, [])  # one plan is not enough
        self.explainer.results["pg18"].callback(ExplainResult(SEQ, analyzed=True))
        event = self.successResultOf(written)
        self.assertEqual(self.events, [event])
        self.assertEqual(event["kind"], "slow_query")
        self.assertEqual(event["plans"], {"truth": INDEX, "target": SEQ})
        self.assertEqual(event["analyzed"], {"truth": True, "target": True})
        self.assertEqual(event["insights"][0]["kind"], "missing_index")
        self.assertIn("Seq Scan on orders", event["plan_summary"]["target"])

    def test_the_llm_answer_comes_later_as_its_own_event(self) -> None:
        written = self.report()
        self.explainer.results["pg15"].callback(ExplainResult(INDEX))
        self.explainer.results["pg18"].callback(ExplainResult(SEQ))
        event = self.successResultOf(written)
        (asked,) = self.provider.asked
        # Literals stay on this machine; both plans and the heuristics go.
        self.assertEqual(asked["statement"], "select * from orders where customer_id = $1")
        self.assertEqual(asked["target"]["plan"], SEQ)
        self.assertEqual(asked["heuristics"][0]["kind"], "missing_index")
        self.assertEqual(len(self.events), 1)
        flushed = self.reporter.flush()
        self.assertNoResult(flushed)  # shutdown waits for the answer
        self.provider.pending.callback({"provider": "llm", "text": "add the index"})
        self.successResultOf(flushed)
        insight = self.events[1]
        self.assertEqual((insight["kind"], insight["event"]), ("insight", event["id"]))
        self.assertEqual(insight["answer"]["text"], "add the index")

    def test_no_answer_no_insight_event(self) -> None:
        written = self.report()
        for label in ("pg15", "pg18"):
            self.explainer.results[label].callback(ExplainResult(error="timeout"))
        event = self.successResultOf(written)
        self.assertEqual(event["plan_errors"], {"truth": "timeout", "target": "timeout"})
        self.assertEqual(event["insights"], [])
        self.provider.pending.callback(None)
        self.assertEqual(len(self.events), 1)

    def test_same_plans_and_a_normal_median_say_one_off(self) -> None:
        fields = dict(
            self.fields(), history={"executions": 500, "p50_ratio": 1.1, "verdict": "a one-off"}
        )
        sides = (SideConnection(TRUTH, {}), SideConnection(TARGET, {}))
        written = self.reporter.slow_query(fields, sides, ExplainRequest("s", "select", True))
        for label in ("pg15", "pg18"):
            self.explainer.results[label].callback(ExplainResult(SEQ))
        (insight,) = self.successResultOf(written)["insights"]
        self.assertEqual(insight["kind"], "one_off")
        self.assertIn("1.1x", insight["message"])
        self.assertIn("500 executions", insight["message"])

    def test_a_plan_difference_is_never_called_a_one_off(self) -> None:
        fields = dict(
            self.fields(), history={"executions": 500, "p50_ratio": 1.1, "verdict": "a one-off"}
        )
        sides = (SideConnection(TRUTH, {}), SideConnection(TARGET, {}))
        written = self.reporter.slow_query(fields, sides, ExplainRequest("s", "select", True))
        self.explainer.results["pg15"].callback(ExplainResult(INDEX))
        self.explainer.results["pg18"].callback(ExplainResult(SEQ))
        kinds = [i["kind"] for i in self.successResultOf(written)["insights"]]
        self.assertEqual(kinds, ["missing_index"])

    def test_without_an_explainer_the_event_is_written_at_once(self) -> None:
        reporter = SlowQueryReporter(self.events.append, lambda: 1_700_000_000.0, None)
        event = self.successResultOf(reporter.slow_query(self.fields(), None, None))
        self.assertEqual(event["plans"], {"truth": None, "target": None})
        self.assertEqual(self.events, [event])

    def test_a_bug_still_leaves_an_event(self) -> None:
        written = self.report()
        self.explainer.results["pg15"].callback("not a result")  # type: ignore[arg-type]
        self.explainer.results["pg18"].callback(ExplainResult(SEQ))
        event = self.successResultOf(written)
        self.assertEqual(event["kind"], "slow_query")
        self.assertEqual(len(self.flushLoggedErrors()), 1)


class MessagesTests(SynchronousTestCase):
    def test_a_bind_that_does_not_decode_is_reported_not_raised(self) -> None:
        explainer = Explainer(ExplainConfig(), lambda c, p: defer.succeed(FakeSide()), task.Clock())
        request = ExplainRequest("select $1", "select", True, bind=b"\x00garbage")
        result = self.successResultOf(explainer.explain(TRUTH, {}, request))
        self.assertIn("cannot bind the parameters again", result.error)  # type: ignore[arg-type]

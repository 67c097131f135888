"""comparison.fail-on-differences without sockets: what the client receives, and what
Twinkly's own statements do, fed byte by byte through StringTransports."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twinkly.compare.sessions import SessionComparisons
from twinkly.compare.shared_state import ComparisonSettings, Monitor
from twinkly.config.schema import loads
from twinkly.proxy.factory import ProxyFactory
from twinkly.report.sink import MemorySink
from twinkly.testing import CONFIG, TCPStringTransport, client_frames, frames, ready_backend
from twinkly.wire import backend as b
from twinkly.wire import frontend as f


def answer(*values: bytes, tag: str = "SELECT 1", status: str = "I") -> bytes:
    return (
        f.encode(b.RowDescription((b.Column("v"),)))
        + b"".join(f.encode(b.DataRow((v,))) for v in values)
        + f.encode(b.CommandComplete(tag))
        + f.encode(b.ReadyForQuery(status))
    )


def done(tag: str, status: str) -> bytes:
    return f.encode(b.CommandComplete(tag)) + f.encode(b.ReadyForQuery(status))


class EnforcerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = loads(CONFIG)
        self.sink = MemorySink()
        settings = ComparisonSettings(fail_on_differences=True)
        monitor = Monitor(settings, self.sink, ("truthdb", "targetdb"))
        clock = MemoryReactorClock()
        comparison = SessionComparisons(monitor, clock.seconds)
        self.factory = ProxyFactory(self.config, clock, comparison=comparison)
        self.client = self.factory.buildProtocol(None)
        self.transport = TCPStringTransport()
        self.client.makeConnection(self.transport)
        self.client.dataReceived(f.StartupMessage({"user": "alice"}).encode())
        self.truth = ready_backend(self.config.truth)
        self.target = ready_backend(self.config.target)
        self.client._backends_ready((self.truth, self.target))
        # Comparing: the target gets the truth's output settings before the session.
        self.assertEqual(
            client_frames(self.truth.transport.value()), [f.Query("SHOW extra_float_digits")]
        )
        self.truth.dataReceived(answer(b"1", tag="SHOW"))
        self.assertEqual(
            client_frames(self.target.transport.value()), [f.Query("SET extra_float_digits = 1")]
        )
        self.target.dataReceived(done("SET", "I"))
        self.assertIsNotNone(self.client.session)
        for backend in (self.truth, self.target):
            backend.transport.clear()
        self.transport.clear()

    def query(self, sql: str) -> None:
        self.client.dataReceived(f.encode(f.Query(sql)))

    def test_equal_answers_are_held_then_delivered_unchanged(self) -> None:
        self.query("select v from t")
        self.truth.dataReceived(answer(b"a"))
        self.assertEqual(self.transport.value(), b"", "held until the target answers")
        self.target.dataReceived(answer(b"a"))
        self.assertEqual(self.transport.value(), answer(b"a"))

    def test_a_difference_becomes_tw001_with_the_real_ready_for_query(self) -> None:
        self.query("select v from t")
        self.truth.dataReceived(answer(b"a"))
        self.target.dataReceived(answer(b"b"))
        error, ready = frames(self.transport.value())
        self.assertEqual(error.sqlstate, "TW001")
        self.assertIn("truthdb", error.message)
        self.assertIn("targetdb", error.message)
        self.assertIn("'a'", error.fields["D"])
        self.assertEqual(ready, b.ReadyForQuery("I"))

    def test_an_autocommit_write_is_wrapped_and_rolled_back_on_a_difference(self) -> None:
        self.query("insert into t values (1)")
        for backend in (self.truth, self.target):
            sent = client_frames(backend.transport.value())
            self.assertEqual(sent, [f.Query("BEGIN"), f.Query("insert into t values (1)")])
            backend.transport.clear()
        self.truth.dataReceived(done("BEGIN", "T") + done("INSERT 0 1", "T"))
        self.target.dataReceived(
            done("BEGIN", "T")
            + f.encode(b.ErrorResponse.make("ERROR", "42P01", "no t"))
            + f.encode(b.ReadyForQuery("E"))
        )
        for backend in (self.truth, self.target):
            self.assertEqual(client_frames(backend.transport.value()), [f.Query("ROLLBACK")])
        self.assertEqual(self.transport.value(), b"", "nothing before the ROLLBACK is done")
        self.truth.dataReceived(done("ROLLBACK", "I"))
        self.target.dataReceived(done("ROLLBACK", "I"))
        error, ready = frames(self.transport.value())
        self.assertEqual(error.sqlstate, "TW002")
        self.assertEqual(ready, b.ReadyForQuery("I"))

    def test_an_equal_wrapped_write_commits_and_the_client_sees_its_own_answer(self) -> None:
        self.query("insert into t values (1)")
        for backend in (self.truth, self.target):
            backend.transport.clear()
            backend.dataReceived(done("BEGIN", "T") + done("INSERT 0 1", "T"))
        for backend in (self.truth, self.target):
            self.assertEqual(client_frames(backend.transport.value()), [f.Query("COMMIT")])
            backend.dataReceived(done("COMMIT", "I"))
        self.assertEqual(self.transport.value(), done("INSERT 0 1", "I"))


class SlowEnforcerTests(SynchronousTestCase):
    """comparison.fail-on-slow-queries: TW003 once the plans are in, or at a deadline."""

    def setUp(self) -> None:
        from twinkly.perf.latency import SlowQuerySettings
        from twinkly.perf.slow import SlowQueryReporter

        self.config = loads(CONFIG)
        self.sink = MemorySink()
        slow = SlowQuerySettings(ratio=4.0, min_seconds=0.010, min_samples=1000, interval=60.0)
        settings = ComparisonSettings(slow=slow, fail_on_slow_queries=True)
        self.reactor = MemoryReactorClock()
        monitor = Monitor(settings, self.sink, ("truthdb", "targetdb"), clock=self.reactor.seconds)
        self.plans: list = []  # (label, Deferred) of each plan asked for

        class Explainer:
            def explain(inner, config, parameters, request):
                from twisted.internet.defer import Deferred

                self.plans.append((config.label, Deferred()))
                return self.plans[-1][1]

        monitor.slow = SlowQueryReporter(monitor.emit, self.reactor.seconds, Explainer())
        self.factory = ProxyFactory(
            self.config,
            self.reactor,
            comparison=SessionComparisons(monitor, self.reactor.seconds),
            timer=self.reactor.seconds,
        )
        self.client = self.factory.buildProtocol(None)
        self.transport = TCPStringTransport()
        self.client.makeConnection(self.transport)
        self.client.dataReceived(f.StartupMessage({"user": "alice"}).encode())
        self.truth = ready_backend(self.config.truth)
        self.target = ready_backend(self.config.target)
        self.client._backends_ready((self.truth, self.target))
        self.truth.dataReceived(answer(b"1", tag="SHOW"))
        self.target.dataReceived(done("SET", "I"))
        self.transport.clear()

    def slow_select(self, sql: str = "select v from t where id = 1") -> None:
        """The truth answers in 1 ms, the target in 100 ms."""
        self.client.dataReceived(f.encode(f.Query(sql)))
        self.reactor.advance(0.001)
        self.truth.dataReceived(answer(b"a"))
        self.reactor.advance(0.099)
        self.target.dataReceived(answer(b"a"))

    def test_tw003_waits_for_the_plans_and_shows_them(self) -> None:
        from twinkly.perf.explain import ExplainResult

        self.slow_select()
        self.assertEqual(self.transport.value(), b"", "held until both plans are in")
        (_, truth_plan), (_, target_plan) = self.plans
        truth_plan.callback(ExplainResult([{"Plan": {"Node Type": "Index Scan"}}]))
        target_plan.callback(ExplainResult(error="canceling statement due to statement timeout"))
        error, ready = frames(self.transport.value())
        self.assertEqual(error.sqlstate, "TW003")
        self.assertIn("targetdb is 100.0x slower than truthdb", error.message)
        self.assertIn("truthdb plan: Index Scan", error.fields["D"])
        self.assertIn("targetdb plan: no plan (canceling statement", error.fields["D"])
        self.assertEqual(ready, b.ReadyForQuery("I"))
        (event,) = self.sink.events
        self.assertIn(event["id"], error.fields["D"])

    def test_plans_that_do_not_come_in_time_do_not_hold_the_client(self) -> None:
        self.slow_select()
        self.reactor.advance(self.config.comparison.explain.statement_timeout + 2.9)
        self.assertEqual(self.transport.value(), b"")
        self.reactor.advance(0.2)  # the deadline
        error, ready = frames(self.transport.value())
        self.assertEqual(error.sqlstate, "TW003")
        self.assertIn("not ready in time", error.fields["D"])
        self.assertEqual(ready, b.ReadyForQuery("I"))
        self.assertEqual(list(self.sink.events), [], "the event itself waits for its plans")
        for _, plan in self.plans:  # the plans arrive late: the event is written ...
            from twinkly.perf.explain import ExplainResult

            plan.callback(ExplainResult(error="late"))
        self.assertEqual([e["kind"] for e in self.sink.events], ["slow_query"])
        self.transport.clear()
        self.client.dataReceived(f.encode(f.Query("select 1")))  # ... and fails nothing else
        self.truth.dataReceived(answer(b"1"))
        self.target.dataReceived(answer(b"1"))
        self.assertEqual(self.transport.value(), answer(b"1"))

    def test_a_rate_limited_repeat_still_fails_with_the_last_plans(self) -> None:
        from twinkly.perf.explain import ExplainResult

        self.slow_select()
        for _, plan in self.plans:
            plan.callback(ExplainResult([{"Plan": {"Node Type": "Seq Scan"}}]))
        (event,) = self.sink.events
        self.transport.clear()
        self.slow_select("select v from t where id = 2")  # same fingerprint, no new event
        error, _ = frames(self.transport.value())
        self.assertEqual(error.sqlstate, "TW003")
        self.assertIn(f"event {event['id']}", error.fields["D"])
        self.assertIn("plan: Seq Scan", error.fields["D"])
        self.assertEqual(len(self.sink.events), 1)
        self.assertEqual(len(self.plans), 2, "no EXPLAIN for the repeat")

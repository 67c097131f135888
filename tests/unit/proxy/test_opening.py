"""Opening both backends: degraded mode, require-target, the breaker; and ending a
session whose backends still execute (cancel, then drain). No reactor runs."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twinkly.compare.sessions import SessionComparisons
from twinkly.compare.shared_state import ComparisonSettings, Monitor
from twinkly.config.schema import loads
from twinkly.proxy.backend import BackendError
from twinkly.proxy.factory import ProxyFactory
from twinkly.proxy.opening import open_backends
from twinkly.report.sink import MemorySink
from twinkly.testing import CONFIG, TCPStringTransport, frames, ready_backend
from twinkly.wire import backend as b
from twinkly.wire import frontend as f


class Harness:
    def __init__(self, extra: str = "") -> None:
        self.config = loads(CONFIG + extra)
        self.reactor = MemoryReactorClock()
        self.sink = MemorySink()
        self.monitor = Monitor(ComparisonSettings(), self.sink, ("truthdb", "targetdb"))
        self.factory = ProxyFactory(
            self.config,
            self.reactor,
            comparison=SessionComparisons(self.monitor, self.reactor.seconds),
        )
        self.calls: list[tuple[str, defer.Deferred]] = []

    def connect(self, reactor, backend, parameters, max_bytes) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.calls.append((backend.label, d))
        return d

    def open(self) -> defer.Deferred:
        opened: list = []
        return open_backends(self.factory, {"user": "u"}, opened, self.connect)

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.sink.events]

    def logging_in(self) -> tuple[Any, TCPStringTransport, defer.Deferred]:
        """A client that sent its start-up; its backends open when ``opening`` fires."""
        client = self.factory.buildProtocol(None)
        transport = TCPStringTransport()
        client.makeConnection(transport)
        opening: defer.Deferred = defer.Deferred()
        self.factory.open_backends = lambda parameters, opened: opening  # type: ignore[method-assign]
        client.dataReceived(f.StartupMessage({"user": "alice"}).encode())
        return client, transport, opening


def refused(label: str) -> BackendError:
    return BackendError(f"cannot connect to {label} (127.0.0.1:5002): connection refused")


class DegradedOpeningTests(SynchronousTestCase):
    def test_target_down_gives_a_truth_only_session(self) -> None:
        h = Harness()
        opening = h.open()
        truth = ready_backend(h.config.truth)
        h.calls[0][1].callback(truth)
        h.calls[1][1].errback(refused("targetdb"))
        self.assertEqual(self.successResultOf(opening), (truth, None))
        self.assertEqual(h.kinds(), ["backend_unavailable"])

    def test_no_retry_per_session_within_the_backoff(self) -> None:
        h = Harness("proxy.target-retry-initial = 5s\n")
        h.open()
        h.calls[0][1].callback(ready_backend(h.config.truth))
        h.calls[1][1].errback(refused("targetdb"))
        for _ in range(10):  # ten sessions: the truth only is tried
            h.calls.clear()
            opening = h.open()
            self.assertEqual([label for label, _ in h.calls], ["truthdb"])
            h.calls[0][1].callback(ready_backend(h.config.truth))
            self.assertIsNone(self.successResultOf(opening)[1])
        h.reactor.advance(5)
        h.calls.clear()
        opening = h.open()
        self.assertEqual([label for label, _ in h.calls], ["truthdb", "targetdb"])
        h.calls[0][1].callback(ready_backend(h.config.truth))
        target = ready_backend(h.config.target)
        h.calls[1][1].callback(target)
        self.assertIs(self.successResultOf(opening)[1], target)
        self.assertEqual(h.kinds(), ["backend_unavailable", "backend_recovered"])

    def test_require_target_refuses_and_fails_fast_while_down(self) -> None:
        h = Harness("comparison.require-target = true\n")
        opening = h.open()
        h.calls[0][1].callback(ready_backend(h.config.truth))
        h.calls[1][1].errback(refused("targetdb"))
        failure = self.failureResultOf(opening, defer.FirstError)
        self.assertIn("targetdb", str(failure.value.subFailure.value))
        h.calls.clear()
        opening = h.open()
        self.assertEqual([label for label, _ in h.calls], ["truthdb"])  # not retried yet
        h.calls[0][1].callback(ready_backend(h.config.truth))
        failure = self.failureResultOf(opening, defer.FirstError)
        self.assertIn("retrying later", str(failure.value.subFailure.value))

    def test_fail_on_differences_implies_require_target(self) -> None:
        h = Harness("comparison.fail-on-differences = true\n")
        opening = h.open()
        h.calls[0][1].callback(ready_backend(h.config.truth))
        h.calls[1][1].errback(refused("targetdb"))
        self.failureResultOf(opening, defer.FirstError)

    def test_a_refusal_is_not_an_outage(self) -> None:
        h = Harness()
        opening = h.open()
        h.calls[0][1].callback(ready_backend(h.config.truth))
        h.calls[1][1].errback(BackendError("targetdb: password authentication failed", "28P01"))
        self.failureResultOf(opening, defer.FirstError)
        self.assertEqual(h.factory.breaker.state, "up")

    def test_truth_down_refuses_as_before(self) -> None:
        h = Harness()
        opening = h.open()
        target = ready_backend(h.config.target)
        h.calls[1][1].callback(target)
        h.calls[0][1].errback(refused("truthdb"))
        self.failureResultOf(opening, defer.FirstError)
        self.assertTrue(target.transport.disconnecting, "the target is not leaked")


class TruthOnlySessionTests(SynchronousTestCase):
    def test_session_serves_and_counts_not_compared(self) -> None:
        h = Harness()
        client, transport, opening = h.logging_in()
        truth = ready_backend(h.config.truth)
        h.factory.breaker.failed("down")
        opening.callback((truth, None))
        self.assertIsInstance(frames(transport.value())[-1], b.ReadyForQuery)
        transport.clear()
        query = f.encode(f.Query("select 1"))
        client.dataReceived(query)
        self.assertEqual(truth.transport.value(), query)
        answer = f.encode(b.CommandComplete("SELECT 0")) + f.encode(b.ReadyForQuery("I"))
        truth.dataReceived(answer)
        self.assertEqual(transport.value(), answer)
        session = client.session
        self.assertEqual(session.target_tracker.owed, 0)
        self.assertEqual(h.factory.breaker.sessions_not_compared, 1)
        client.dataReceived(f.encode(f.Terminate()))
        self.assertEqual(h.monitor.outcomes["not_compared"], 1)


class CancelOnEndTests(SynchronousTestCase):
    def start(self) -> tuple[Harness, object, object, object, list]:
        h = Harness()
        client, _, opening = h.logging_in()
        truth, target = ready_backend(h.config.truth), ready_backend(h.config.target)
        from twinkly.proxy import client as client_module

        self.patch(client_module, "align_settings", lambda *a: defer.succeed(None))
        opening.callback((truth, target))
        session = client.session
        cancels: list = []
        session.send_cancel = cancels.append
        return h, client, truth, target, cancels

    def test_client_gone_mid_query_cancels_both_then_drains(self) -> None:
        h, client, truth, target, cancels = self.start()
        client.dataReceived(f.encode(f.Query("select pg_sleep(60)")))
        client.connectionLost(None)
        self.assertEqual(cancels, [truth, target])
        self.assertEqual(truth.clock.getDelayedCalls()[0].getTime(), 30.0)  # the drain cap
        self.assertFalse(truth.transport.disconnecting, "drained: the answer may still come")
        cancelled = f.encode(b.ErrorResponse.make("ERROR", "57014", "canceling statement"))
        truth.dataReceived(cancelled + f.encode(b.ReadyForQuery("I")))
        row = f.encode(b.RowDescription((b.Column("x", type_oid=23),)))
        target.dataReceived(
            row + f.encode(b.CommandComplete("SELECT 0")) + f.encode(b.ReadyForQuery("I"))
        )
        self.assertEqual(h.kinds(), ["statement_cut_short"])
        self.assertEqual(h.monitor.outcomes["not_compared"], 1)
        self.assertEqual(h.monitor.outcomes["one_sided_error"], 0)
        self.assertIn("the client left", h.sink.events[0]["reason"])

    def test_idle_backends_are_not_cancelled(self) -> None:
        _h, client, truth, _target, cancels = self.start()
        client.connectionLost(None)
        self.assertEqual(cancels, [])
        self.assertTrue(truth.transport.disconnecting)

    def test_terminate_after_a_query_lets_it_finish(self) -> None:
        _h, client, _truth, _target, cancels = self.start()
        client.dataReceived(f.encode(f.Query("update t set x = 1")) + f.encode(f.Terminate()))
        self.assertEqual(cancels, [], "the client asked for it to run: it runs")

    def test_truth_lost_cancels_the_target(self) -> None:
        h, client, truth, target, cancels = self.start()
        client.dataReceived(f.encode(f.Query("select pg_sleep(60)")))
        truth.transport.connected = False
        truth.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(cancels, [target])
        # The truth's answer will never come: reported as cut short at once.
        (event,) = h.sink.by_kind("statement_cut_short")
        self.assertEqual(event["statement"], "select pg_sleep(60)")
        self.assertIn("source of truth", event["reason"])
        self.assertEqual(h.monitor.outcomes["not_compared"], 1)

"""Every implementation of twinkly/interfaces.py provides what its interface promises."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twinkly.compare.comparator import Comparator
from twinkly.compare.sessions import SessionComparisons
from twinkly.compare.shared_state import ComparisonSettings, Monitor
from twinkly.interfaces import (
    IAdminConsoles,
    IComparison,
    IPairObserver,
    ISessionFacts,
    ISessionOperations,
    ISessionTracer,
    IVerdictListener,
)
from twinkly.ops.admin import AdminConsoles
from twinkly.ops.trace import ProtocolTrace, SessionTracer
from twinkly.proxy.verdicts import VerdictQueue
from twinkly.report.sink import MemorySink
from twinkly.testing import ClientHarness
from twinkly.tracking.pairing import PairCounter


class Recorder:
    holding = True

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mismatch(self, event: dict) -> None:
        self.calls.append(("mismatch", event["id"]))

    def slow(self, written: object, provisional: dict) -> None:
        self.calls.append(("slow", provisional["id"]))

    def truth_synced(self, point: object) -> None:
        self.calls.append(("synced", point))


class ImplementationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.monitor = Monitor(ComparisonSettings(), MemorySink(), ("pg15", "pg18"))

    def test_session(self) -> None:
        h = ClientHarness()
        h.startup()
        h.connect_backends()
        session = h.client.session
        self.assertTrue(verifyObject(ISessionOperations, session))
        self.assertTrue(verifyObject(ISessionFacts, session))

    def test_observers(self) -> None:
        self.assertTrue(verifyObject(IPairObserver, PairCounter()))
        comparator = Comparator(self.monitor, None, None, lambda: 0.0)
        self.assertTrue(verifyObject(IPairObserver, comparator))

    def test_comparison_side(self) -> None:
        self.assertTrue(verifyObject(IComparison, SessionComparisons(self.monitor, lambda: 0.0)))

    def test_verdict_queue(self) -> None:
        self.assertTrue(verifyObject(IVerdictListener, VerdictQueue(Recorder())))

    def test_admin_consoles_and_tracer(self) -> None:
        self.assertTrue(verifyObject(IAdminConsoles, AdminConsoles(("ops",), lambda: None)))
        tracer = SessionTracer(lambda s: ProtocolTrace(self.mktemp(), 1024, lambda: 0.0), False)
        self.assertTrue(verifyObject(ISessionTracer, tracer))


class VerdictQueueTests(SynchronousTestCase):
    def test_nothing_reaches_the_enforcer_until_applied_then_all_in_order(self) -> None:
        enforcer = Recorder()
        queue = VerdictQueue(enforcer)
        queue.mismatch({"id": "e1"})
        queue.synced("rfq-1")
        queue.slow(None, {"id": "e2"})
        self.assertTrue(queue)
        self.assertEqual(enforcer.calls, [])  # inside the tracker's loop: queued only
        queue.apply()
        self.assertEqual(enforcer.calls, [("mismatch", "e1"), ("synced", "rfq-1"), ("slow", "e2")])
        self.assertFalse(queue)

    def test_a_verdict_queued_while_applying_is_applied_in_the_same_pass(self) -> None:
        enforcer = Recorder()
        queue = VerdictQueue(enforcer)

        def synced_then_more(point: object) -> None:
            enforcer.calls.append(("synced", point))
            if point == "first":
                queue.synced("second")  # e.g. Twinkly's own COMMIT answered at once

        enforcer.truth_synced = synced_then_more  # type: ignore[method-assign]
        queue.synced("first")
        queue.apply()
        self.assertEqual(enforcer.calls, [("synced", "first"), ("synced", "second")])

    def test_holding_is_the_enforcers(self) -> None:
        enforcer = Recorder()
        queue = VerdictQueue(enforcer)
        enforcer.holding = False
        self.assertFalse(queue.holding)

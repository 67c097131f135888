"""quick_timers: a reactor turn with nothing due costs three calls, and timed calls,
calls from threads and cancellations behave exactly as in Twisted. A real epoll reactor
with its clock replaced; the reactor is never run."""

from __future__ import annotations

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from twinkly.app.reactor_turn import quick_timers


class QuickTimersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = 1000.0
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.reactor.seconds = lambda: self.now  # type: ignore[method-assign]
        self.assertTrue(quick_timers(self.reactor))

    def turn(self) -> float | None:
        """What the main loop does before it polls: run what is due, ask how long to wait."""
        self.reactor.runUntilCurrent()
        return self.reactor.timeout()

    def test_only_once(self) -> None:
        self.assertFalse(quick_timers(self.reactor))

    def test_no_timers_waits_forever(self) -> None:
        self.assertIsNone(self.turn())
        self.assertIsNone(self.turn())

    def test_a_timed_call_sets_the_timeout_and_runs_when_due(self) -> None:
        ran: list[float] = []
        self.reactor.callLater(5, lambda: ran.append(self.now))
        self.assertEqual(self.turn(), 5.0)  # a new call: Twisted's own path inserts it
        inserted: list[int] = []
        insert = self.reactor._insertNewDelayedCalls
        self.reactor._insertNewDelayedCalls = lambda: (inserted.append(1), insert())[1]  # type: ignore[method-assign]
        self.now += 2
        self.assertEqual(self.turn(), 3.0)
        self.assertEqual(inserted, [])  # the quick path: Twisted's methods were not called
        self.assertEqual(ran, [])
        self.now += 3
        self.assertEqual(self.turn(), None)
        self.assertEqual(ran, [1005.0])

    def test_the_earliest_of_several_and_a_cancelled_one(self) -> None:
        ran: list[str] = []
        late = self.reactor.callLater(9, ran.append, "late")
        self.reactor.callLater(4, ran.append, "early")
        self.turn()
        late.cancel()
        self.now += 4
        self.turn()
        self.now += 10
        self.turn()
        self.assertEqual(ran, ["early"])

    def test_a_call_from_a_thread_runs_on_the_next_turn(self) -> None:
        ran: list[int] = []
        self.reactor.callLater(60, ran.append, 2)
        self.turn()
        self.reactor.callFromThread(ran.append, 1)
        self.assertEqual(self.turn(), 60.0)
        self.assertEqual(ran, [1])

    def test_a_timeout_asked_outside_a_turn_is_twisteds_own(self) -> None:
        self.reactor.callLater(7, lambda: None)
        self.turn()
        self.now += 1
        self.assertEqual(self.reactor.timeout(), 6.0)  # no stale clock from the turn
        self.assertEqual(self.reactor.timeout(), 6.0)

    def test_very_long_waits_are_capped_as_twisted_does(self) -> None:
        self.reactor.callLater(10**9, lambda: None)
        self.turn()
        self.assertEqual(self.turn(), 2147483)

    def test_other_reactors_are_left_alone(self) -> None:
        self.assertFalse(quick_timers(MemoryReactor()))

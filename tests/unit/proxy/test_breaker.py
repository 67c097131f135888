"""The target's circuit breaker: one connect per backoff period, one event per outage."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twinkly.proxy.breaker import DOWN, PROBING, UP, TargetBreaker


class BreakerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.events: list[tuple[str, dict]] = []
        self.breaker = TargetBreaker(
            self.clock, 1.0, 8.0, lambda kind, fields: self.events.append((kind, fields))
        )

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def test_up_allows_every_session(self) -> None:
        self.assertTrue(all(self.breaker.allow() for _ in range(5)))
        self.breaker.succeeded()
        self.assertEqual(self.events, [])
        self.assertTrue(self.breaker.available)

    def test_failure_opens_and_is_announced_once(self) -> None:
        self.assertTrue(self.breaker.allow())
        self.breaker.failed("cannot connect to pg18: refused")
        self.assertEqual(self.breaker.state, DOWN)
        self.assertEqual([self.breaker.allow() for _ in range(3)], [False] * 3)
        for _ in range(3):
            self.breaker.session_without_target()
        self.assertEqual(self.kinds(), ["backend_unavailable"])
        self.assertEqual(self.events[0][1]["reason"], "cannot connect to pg18: refused")
        self.assertEqual(self.breaker.describe()["state"], DOWN)

    def test_one_probe_per_backoff_doubling_to_the_maximum(self) -> None:
        self.breaker.allow()
        self.breaker.failed("down")
        waits = []
        for _ in range(6):
            self.assertFalse(self.breaker.allow())
            waits.append(self.breaker.retry_at - self.clock.seconds())
            self.clock.advance(waits[-1])
            self.assertTrue(self.breaker.allow())  # this session is the probe
            self.assertEqual(self.breaker.state, PROBING)
            self.assertFalse(self.breaker.allow(), "others do not wait for the probe")
            self.breaker.failed("still down")
        self.assertEqual(waits, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0])
        self.assertEqual(self.kinds(), ["backend_unavailable"])

    def test_recovery_is_announced_with_the_outage(self) -> None:
        self.breaker.allow()
        self.breaker.failed("down")
        self.breaker.session_without_target()
        self.breaker.session_without_target()
        self.clock.advance(1.5)
        self.assertTrue(self.breaker.allow())
        self.breaker.succeeded()
        self.assertEqual(self.breaker.state, UP)
        self.assertEqual(self.kinds(), ["backend_unavailable", "backend_recovered"])
        recovered = self.events[1][1]
        self.assertEqual(recovered["sessions_not_compared"], 2)
        self.assertEqual(recovered["outage_s"], 1.5)
        self.assertEqual(self.breaker.sessions_not_compared, 2)
        # The backoff starts again from its first step.
        self.breaker.allow()
        self.breaker.failed("down again")
        self.assertEqual(self.breaker.retry_at - self.clock.seconds(), 1.0)
        self.assertEqual(self.breaker.outages, 2)

    def test_lost_connections_announced_once_without_opening(self) -> None:
        for session in (1, 2, 3):
            self.breaker.lost("the target closed the connection", session)
        self.assertEqual(self.kinds(), ["backend_unavailable"])
        self.assertEqual(self.events[0][1]["session"], 1)
        self.assertTrue(self.breaker.allow(), "a lost connection is not yet an outage")
        self.assertFalse(self.breaker.available)
        self.breaker.succeeded()
        self.assertEqual(self.kinds(), ["backend_unavailable", "backend_recovered"])
        self.assertTrue(self.breaker.available)

    def test_lost_then_failed_connect_is_one_outage(self) -> None:
        self.breaker.lost("closed", 1)
        self.breaker.allow()
        self.breaker.failed("refused")
        self.assertEqual(self.kinds(), ["backend_unavailable"])
        self.assertEqual(self.breaker.state, DOWN)

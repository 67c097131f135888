"""A target that keeps the client waiting too long is dropped for that session
(twinkly/proxy/stall.py): the watch alone on a fake clock, then a real session whose
backends are protocol objects on string transports."""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twinkly.config.schema import ConfigError, loads
from twinkly.ops.live import flatten
from twinkly.proxy.stall import StallWatch
from twinkly.testing import CONFIG, ClientHarness, client_frames
from twinkly.wire import backend as b
from twinkly.wire import frontend as f


class StallWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.stalls: list[float] = []
        self.watch = StallWatch(self.clock, 5.0, self.stalls.append)

    def test_waiting_on_the_target_past_the_timeout_is_a_stall(self) -> None:
        self.watch.changed("target-lag", True)
        self.clock.advance(4.9)
        self.assertEqual(self.stalls, [])
        self.clock.advance(0.1)
        self.assertEqual(self.stalls, [5.0])

    def test_a_break_in_the_wait_starts_the_count_again(self) -> None:
        self.watch.changed("target-buffer", True)
        self.clock.advance(4)
        self.watch.changed("target-buffer", False)
        self.watch.changed("target-buffer", True)
        self.clock.advance(4)
        self.assertEqual(self.stalls, [])
        self.clock.advance(1)
        self.assertEqual(self.stalls, [5.0])

    def test_the_wait_lasts_while_any_target_reason_holds(self) -> None:
        self.watch.changed("target-lag", True)
        self.watch.changed("target-lag-bytes", True)
        self.clock.advance(3)
        self.watch.changed("target-lag", False)  # still held back in bytes
        self.assertTrue(self.watch.waiting)
        self.clock.advance(2)
        self.assertEqual(self.stalls, [5.0])

    def test_other_reasons_are_not_the_targets_doing(self) -> None:
        self.watch.changed("client-buffer", True)
        self.watch.changed("truth-buffer", True)
        self.clock.advance(60)
        self.assertEqual(self.stalls, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_zero_never_drops(self) -> None:
        watch = StallWatch(self.clock, 0.0, self.stalls.append)
        watch.changed("target-lag", True)
        self.clock.advance(3600)
        self.assertEqual(self.stalls, [])

    def test_stop_cancels_the_timer(self) -> None:
        self.watch.changed("target-lag", True)
        self.watch.stop()
        self.clock.advance(10)
        self.assertEqual(self.stalls, [])


SELECT = f.encode(f.Query("select 1"))
ANSWER = f.encode(b.CommandComplete("SELECT 0")) + f.encode(b.ReadyForQuery("I"))


class StalledSessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        # CONFIG lets the target lag 4 results before the client waits.
        self.h = ClientHarness(CONFIG + "proxy.target-stall-timeout = 5s\n")
        self.h.startup()
        self.truth, self.target = self.h.connect_backends()
        self.session = self.h.client.session
        self.cancelled: list[object] = []
        self.session.send_cancel = self.cancelled.append
        for _ in range(4):  # the target answers nothing: the client ends up waiting
            self.h.client.dataReceived(SELECT)
            self.truth.dataReceived(ANSWER)
        self.assertEqual(self.h.transport.producerState, "paused")

    def test_the_target_is_cancelled_and_dropped_and_the_client_goes_on(self) -> None:
        self.h.reactor.advance(5)
        self.assertEqual(self.cancelled, [self.target])
        self.assertTrue(self.target.transport.disconnecting)
        self.target.connectionLost(Failure(ConnectionLost()))
        self.assertIsNone(self.session.target)
        self.assertEqual(self.h.transport.producerState, "producing")
        self.truth.transport.clear()
        self.h.transport.clear()
        self.h.client.dataReceived(SELECT)  # served by the truth alone from now on
        self.assertEqual(client_frames(self.truth.transport.value()), [f.Query("select 1")])
        self.truth.dataReceived(ANSWER)
        self.assertEqual(self.h.transport.value(), ANSWER)
        self.assertIn("kept the client waiting 5 s", self.session.pairer.abandoned)

    def test_a_target_that_catches_up_in_time_is_kept(self) -> None:
        self.h.reactor.advance(4)
        for _ in range(4):
            self.target.dataReceived(ANSWER)
        self.assertEqual(self.h.transport.producerState, "producing")
        self.h.reactor.advance(60)
        self.assertEqual(self.cancelled, [])
        self.assertFalse(self.target.transport.disconnecting)
        self.assertIs(self.session.target, self.target)

    def test_a_closed_session_has_no_timer_left(self) -> None:
        self.session.close()  # cancels the target's owed statements itself, once
        after_close = list(self.cancelled)
        self.h.reactor.advance(60)
        self.assertEqual(self.cancelled, after_close)
        self.assertFalse(
            any(
                c.active()
                for c in self.h.reactor.getDelayedCalls()
                if c.func == self.session.stall._expired
            )
        )


class StallConfigTests(SynchronousTestCase):
    def test_default_zero_and_a_bad_value_named(self) -> None:
        self.assertEqual(loads(CONFIG).proxy.target_stall_timeout, 15.0)
        self.assertEqual(flatten(loads(CONFIG))["proxy.target-stall-timeout"], 15.0)
        off = loads(CONFIG + "proxy.target-stall-timeout = 0\n")
        self.assertEqual(off.proxy.target_stall_timeout, 0.0)
        with self.assertRaises(ConfigError) as raised:
            loads(CONFIG + "proxy.target-stall-timeout = soon\n")
        self.assertIn("proxy.target-stall-timeout", str(raised.exception))

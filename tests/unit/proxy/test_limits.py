"""Connection limits and the login timeout, on a MemoryReactorClock and StringTransports."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twinkly.config.schema import ConfigError, loads
from twinkly.proxy.factory import ProxyFactory
from twinkly.proxy.limits import ConnectionLimits
from twinkly.testing import CONFIG, TCPStringTransport, frames
from twinkly.wire import backend as b
from twinkly.wire import frontend as f


class ConnectionLimitsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.settings = (15.0, 3, 2)
        self.limits = ConnectionLimits(self.clock, lambda: self.settings)
        self.timeouts: list[int] = []

    def admit(self, n: int = 0):
        return self.limits.admit(lambda: self.timeouts.append(n))

    def test_startup_cap_then_client_cap(self) -> None:
        first, second = self.admit(1), self.admit(2)
        refused = self.admit(3)
        self.assertIsInstance(refused, str)
        self.assertIn("max-startup-connections = 2", refused)
        first.logged_in()
        third = self.admit(3)
        self.assertNotIsInstance(third, str)
        self.assertIn("max-client-connections = 3", self.admit(4))
        self.assertEqual(
            (self.limits.clients, self.limits.starting, self.limits.refused), (3, 2, 2)
        )
        for admission in (first, second, third, first):  # gone twice: counted once
            admission.gone()
        self.assertEqual((self.limits.clients, self.limits.starting), (0, 0))

    def test_login_timer(self) -> None:
        admission = self.admit(1)
        self.admit(2).logged_in()
        self.clock.advance(14.9)
        self.assertEqual(self.timeouts, [])
        self.clock.advance(0.2)
        self.assertEqual(self.timeouts, [1])
        self.assertEqual(self.limits.login_timeouts, 1)
        admission.gone()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_settings_are_read_per_connection(self) -> None:
        self.settings = (1.0, 1, 1)
        self.admit(1)
        self.settings = (1.0, 5, 5)
        self.assertNotIsInstance(self.admit(2), str)


class ClientLimitTests(SynchronousTestCase):
    """ClientProtocol with the factory's limits (no reactor runs)."""

    def make(self, extra: str = "") -> tuple[ProxyFactory, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        factory = ProxyFactory(loads(CONFIG + extra), reactor)
        return factory, reactor

    def connect(self, factory: ProxyFactory):
        client = factory.buildProtocol(None)
        transport = TCPStringTransport()
        client.makeConnection(transport)
        return client, transport

    def test_login_timeout_closes_a_silent_connection(self) -> None:
        factory, reactor = self.make("proxy.client-login-timeout = 2s\n")
        client, transport = self.connect(factory)
        reactor.advance(1.9)
        self.assertFalse(transport.disconnecting)
        reactor.advance(0.2)
        (error,) = frames(transport.value())
        self.assertEqual((error.severity, error.sqlstate), ("FATAL", "57014"))
        self.assertTrue(transport.disconnecting)
        client.connectionLost(None)
        self.assertEqual((factory.limits.clients, factory.limits.starting), (0, 0))

    def test_login_timeout_covers_authentication(self) -> None:
        factory, reactor = self.make(
            "proxy.client-login-timeout = 2s\n"
            "proxy.auth { method = password, users = [{name = alice, password = s}] }\n"
        )
        client, transport = self.connect(factory)
        client.dataReceived(f.StartupMessage({"user": "alice"}).encode())
        transport.clear()
        reactor.advance(2.1)  # never answered the password request
        (error,) = frames(transport.value())
        self.assertEqual(error.sqlstate, "57014")

    def test_logged_in_client_is_not_timed_out(self) -> None:
        factory, reactor = self.make("proxy.client-login-timeout = 2s\n")
        factory.open_backends = lambda parameters, opened: __import__(  # type: ignore[method-assign]
            "twisted.internet.defer", fromlist=["Deferred"]
        ).Deferred()
        client, transport = self.connect(factory)
        client.dataReceived(f.StartupMessage({"user": "alice"}).encode())
        self.assertEqual(frames(transport.value()), [b.Authentication(b.AUTH_OK)])
        reactor.advance(60)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(factory.limits.starting, 0)

    def test_too_many_clients_get_53300(self) -> None:
        factory, _ = self.make(
            "proxy { max-client-connections = 2, max-startup-connections = 2 }\n"
        )
        kept = [self.connect(factory) for _ in range(2)]
        client, transport = self.connect(factory)
        (error,) = frames(transport.value())
        self.assertEqual((error.severity, error.sqlstate), ("FATAL", "53300"))
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(client, factory.clients)
        kept[0][0].connectionLost(None)
        _, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"")

    def test_config_validation(self) -> None:
        self.assertEqual(loads(CONFIG).proxy.client_login_timeout, 15.0)
        for bad in (
            "proxy.client-login-timeout = 0",
            "proxy { max-client-connections = 5, max-startup-connections = 6 }",
            "proxy.max-client-connections = 0",
            "proxy { target-retry-initial = 10s, target-retry-max = 1s }",
        ):
            with self.assertRaises(ConfigError, msg=bad):
                loads(CONFIG + bad + "\n")

    def test_require_target_follows_fail_on_differences_unless_set(self) -> None:
        self.assertFalse(loads(CONFIG).comparison.require_target)
        on = "comparison.fail-on-differences = true\n"
        self.assertTrue(loads(CONFIG + on).comparison.require_target)
        self.assertFalse(
            loads(CONFIG + on + "comparison.require-target = false\n").comparison.require_target
        )
        self.assertTrue(
            loads(CONFIG + "comparison.require-target = true\n").comparison.require_target
        )


class ShowConfigTests(SynchronousTestCase):
    def test_limits_and_availability_keys_are_listed(self) -> None:
        from twinkly.ops.live import flatten

        keys = flatten(loads(CONFIG))
        for key in (
            "proxy.client-login-timeout",
            "proxy.max-client-connections",
            "proxy.max-startup-connections",
            "proxy.target-retry-initial",
            "proxy.target-retry-max",
            "comparison.require-target",
            "reporting.flush-interval",
            "reporting.fsync",
        ):
            self.assertIn(key, keys)
        self.assertEqual(keys["proxy.client-login-timeout"], 15.0)

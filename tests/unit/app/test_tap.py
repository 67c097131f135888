"""``makeService`` builds the whole service tree on an injected reactor, listening on
nothing until started (MemoryReactorClock: no reactor runs, no socket opens)."""

from __future__ import annotations

from pathlib import Path

from twisted.application.internet import TCPServer
from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twinkly.app.service import ProxyService
from twinkly.app.tap import Options, makeService
from twinkly.interfaces import IAdminConsoles, IComparison, ISessionTracer
from twinkly.proxy.factory import ProxyFactory


class Reactor(MemoryReactorClock):
    """A memory reactor that also runs what threads hand back to it."""

    def callFromThread(self, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        f(*args, **kwargs)


def write_config(directory: Path, extra: str = "") -> Path:
    path = directory / "twinkly.conf"
    path.write_text(
        "proxy {\n listen-address = 127.0.0.1\n listen-port = 15432\n"
        " postgresql { label = pg15, port = 1 }\n yugabytedb { label = pg18, port = 2 }\n"
        ' admin { users = ["ops"] }\n}\n'
        "comparison { enabled = true }\n"
        f'reporting {{ events-file = "{directory / "events.jsonl"}" }}\n' + extra
    )
    return path


class MakeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.reactor = Reactor()

    def build(self, extra: str = "") -> tuple[IServiceCollection, ProxyFactory]:
        options = Options()
        options.parseOptions(["--config", str(write_config(self.dir, extra))])
        top = makeService(options, self.reactor)
        proxies = [s for s in top if isinstance(s, ProxyService)]  # type: ignore[attr-defined]
        self.assertEqual(len(proxies), 1)
        if proxies[0].monitor is not None:
            self.addCleanup(proxies[0].monitor.sink.close)
        return top, proxies[0].factory

    def test_the_factory_gets_every_collaborator_it_needs(self) -> None:
        _, factory = self.build()
        self.assertTrue(verifyObject(IComparison, factory.comparison))
        self.assertTrue(verifyObject(IAdminConsoles, factory.admin))
        self.assertTrue(verifyObject(ISessionTracer, factory.tracer))
        self.assertIs(factory.reactor, self.reactor)
        # The console's status exists once the tree is built.
        self.assertTrue(factory.admin.allowed("ops"))
        self.assertFalse(factory.admin.allowed("mallory"))

    def test_starting_listens_on_the_configured_address_through_the_given_reactor(self) -> None:
        top, _ = self.build()
        top.startService()  # type: ignore[attr-defined]
        self.addCleanup(top.stopService)  # type: ignore[attr-defined]
        ports = [(port, interface) for port, _, _, interface in self.reactor.tcpServers]
        self.assertIn((15432, "127.0.0.1"), ports)

    def test_operations_are_attached_only_when_configured(self) -> None:
        top, _ = self.build()
        self.assertEqual([s for s in top if isinstance(s, TCPServer)], [])  # type: ignore[attr-defined]
        top, _ = self.build("monitoring.http { enabled = true, port = 19187 }\n")
        servers = [s for s in top if isinstance(s, TCPServer)]  # type: ignore[attr-defined]
        self.assertEqual([s.args[0] for s in servers], [19187])

    def test_comparison_off_gives_a_relay_without_a_comparator(self) -> None:
        top, factory = self.build("comparison.enabled = false\n")
        self.assertIsNone(factory.comparison)
        service = next(s for s in top if isinstance(s, ProxyService))  # type: ignore[attr-defined]
        self.assertIsNone(service.monitor)

    def test_a_bad_key_is_named(self) -> None:
        options = Options()
        path = write_config(self.dir, "comparison { no-such-key = 1 }\n")
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--config", str(path)])
        self.assertIn("comparison.no-such-key", str(caught.exception))

"""The proxy's lifecycle: listen, and on shutdown let sessions finish, then close them."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import Logger

from twinkly.proxy.client import fatal
from twinkly.proxy.factory import ProxyFactory

log = Logger()

LISTEN_BACKLOG = 1024


class ProxyService(Service):
    """Listens for clients. ``stopService`` stops accepting at once, waits up to
    ``proxy.shutdown-timeout`` for sessions to end, then closes the rest."""

    name = "twinkly-proxy"

    def __init__(
        self,
        factory: ProxyFactory,
        reactor: object,
        monitor: Any = None,
        tracer: Any = None,
    ) -> None:
        self.factory = factory
        self.monitor = monitor  # its events are flushed and closed at the end
        self.tracer = tracer
        self.reactor = reactor
        self.port = None

    def startService(self) -> None:
        super().startService()
        proxy = self.factory.config.proxy
        endpoint_type = TCP6ServerEndpoint if ":" in proxy.listen_address else TCP4ServerEndpoint
        # A burst of connections waits in the kernel's queue, not dropped there (Twisted's
        # default of 50 lets a few hundred simultaneous connects stall for seconds).
        endpoint = endpoint_type(
            self.reactor,
            proxy.listen_port,
            backlog=LISTEN_BACKLOG,
            interface=proxy.listen_address,
        )
        # Listening happens before the reactor runs, so a taken port stops start-up.
        d = endpoint.listen(self.factory)
        d.addCallback(self._listening)
        d.addErrback(self._cannot_listen)

    def _listening(self, port: object) -> None:
        self.port = port
        address = port.getHost()  # type: ignore[attr-defined]
        config = self.factory.config
        log.info(
            "Twinkly listening on {host}:{port}; source of truth {truth}, target {target}",
            host=address.host,
            port=address.port,
            truth=config.truth.describe(),
            target=config.target.describe(),
        )

    def _cannot_listen(self, failure: object) -> None:
        log.failure("cannot listen", failure)  # type: ignore[arg-type]
        self.reactor.stop()  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        super().stopService()
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        clients = self.factory.clients
        if clients:
            timeout = self.factory.config.proxy.shutdown_timeout
            log.info(
                "waiting up to {timeout}s for {count} sessions to end",
                timeout=timeout,
                count=len(clients),
            )
            deadline = self.reactor.seconds() + timeout  # type: ignore[attr-defined]
            while clients and self.reactor.seconds() < deadline:  # type: ignore[attr-defined]
                yield _sleep(self.reactor, 0.1)
        for client in list(clients):
            client.transport.write(
                fatal("57P01", "terminating connection due to administrator command")
            )
            if client.session is not None:
                client.session.close()
            client.transport.loseConnection()
        give_up = self.reactor.seconds() + 1.0  # type: ignore[attr-defined]
        while clients and self.reactor.seconds() < give_up:  # type: ignore[attr-defined]
            yield _sleep(self.reactor, 0.05)
        for client in list(clients):
            client.transport.abortConnection()
        monitor = self.monitor
        if monitor is not None:
            # slow_query events still waiting for their plans (bounded by the EXPLAIN
            # statement_timeout): written before the report is closed.
            yield monitor.slow.flush()
            log.info(
                "comparison totals: {outcomes}; events written: {events}",
                outcomes=dict(monitor.outcomes),
                events=dict(monitor.events),
            )
            for fingerprint, count, statement in monitor.top_mismatches(5):
                log.info(
                    "top mismatch: {fingerprint} x{count}: {statement}",
                    fingerprint=fingerprint,
                    count=count,
                    statement=statement[:200],
                )
            yield monitor.sink.close()
        if self.tracer is not None:
            self.tracer.close()


def _sleep(reactor: object, seconds: float) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    return d

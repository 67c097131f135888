"""The proxy's lifecycle: listen, and on shutdown let sessions finish, then close them."""

from __future__ import annotations

import ctypes
import gc
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorCore, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twinkly.app import tls_stack
from twinkly.app.reactor_turn import quick_timers
from twinkly.compare import lane
from twinkly.proxy.client import fatal
from twinkly.proxy.factory import ProxyFactory
from twinkly.proxy.sockets import direct_dispatch
from twinkly.tracking import responses
from twinkly.wire import accel

log = Logger()

LISTEN_BACKLOG = 1024


class IServiceReactor(IReactorCore, IReactorTime, IReactorTCP):
    """What the proxy service uses of its reactor (every Twisted reactor provides it all)."""


class ProxyService(Service):
    """Listens for clients. ``stopService`` stops accepting at once, waits up to
    ``proxy.shutdown-timeout`` for sessions to end, then closes the rest."""

    # Twisted's Service says ``name = None`` unannotated (so: type None); IService: a str.
    name = "twinkly-proxy"  # type: ignore[assignment]

    def __init__(
        self,
        factory: ProxyFactory,
        reactor: IServiceReactor,
        monitor: Any = None,
        tracer: Any = None,
        reuse_port: bool = False,
    ) -> None:
        self.factory = factory
        self.monitor = monitor  # its events are flushed and closed at the end
        self.tracer = tracer
        self.reuse_port = reuse_port  # several workers listen on the same address
        self.reactor = reactor
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        direct = direct_dispatch(self.reactor)
        quick_timers(self.reactor)
        log.info(
            "hot path: {accelerator} implementation of twinkly.wire.accel{why},"
            " {tracker} response tracker and pairer, {lane} matched lane;"
            " reactor events dispatched {dispatch};"
            " TLS stack {tls}",
            accelerator="C" if accel.IMPLEMENTATION == "c" else "pure-Python",
            why=accel.reason(),
            tracker="C" if responses.IMPLEMENTATION == "c" else "pure-Python",
            lane="C" if lane.IMPLEMENTATION == "c" else "pure-Python",
            dispatch="directly" if direct else "through Twisted's log context",
            tls="loaded" if tls_stack.loaded() else "not loaded (no TLS configured)",
        )
        proxy = self.factory.config.proxy
        # Listening happens before the reactor runs, so a taken port stops start-up.
        if self.reuse_port:
            d = defer.maybeDeferred(
                listen_reusing_port,
                self.reactor,
                proxy.listen_address,
                proxy.listen_port,
                self.factory,
            )
        else:
            endpoint_type = (
                TCP6ServerEndpoint if ":" in proxy.listen_address else TCP4ServerEndpoint
            )
            # A burst of connections waits in the kernel's queue, not dropped there
            # (Twisted's default of 50 lets a few hundred simultaneous connects stall).
            endpoint = endpoint_type(
                self.reactor,
                proxy.listen_port,
                backlog=LISTEN_BACKLOG,
                interface=proxy.listen_address,
            )
            d = endpoint.listen(self.factory)
        d.addCallback(self._listening)
        d.addErrback(self._cannot_listen)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        assert isinstance(address, IPv4Address | IPv6Address)  # a TCP endpoint's
        config = self.factory.config
        log.info(
            "Twinkly listening on {host}:{port}; source of truth {truth}, target {target}",
            host=address.host,
            port=address.port,
            truth=config.truth.describe(),
            target=config.target.describe(),
        )
        release_freed_memory()

    @defer.inlineCallbacks
    def _drained(self, deadline: float):  # type: ignore[no-untyped-def]
        """Wait, until ``deadline`` (or a second from now, if later), for the backends of
        ended sessions to send the answers they owe: they are compared before the totals
        and the report close. Then whatever is left is cut off."""
        draining = self.factory.draining
        if not draining:
            return
        log.info("waiting for {count} backend connections to send what they owe",
                 count=len(draining))  # fmt: skip
        deadline = max(deadline, self.reactor.seconds() + 1.0)
        while draining and self.reactor.seconds() < deadline:
            yield _sleep(self.reactor, 0.05)
        for backend in list(draining):
            if backend.transport is not None:
                backend.transport.abortConnection()  # type: ignore[attr-defined]

    def _cannot_listen(self, failure: Failure) -> None:
        log.failure("cannot listen", failure)
        self.reactor.stop()

    @defer.inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        super().stopService()
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        clients = self.factory.clients
        timeout = self.factory.config.proxy.shutdown_timeout
        deadline = self.reactor.seconds() + timeout
        if clients:
            log.info(
                "waiting up to {timeout}s for {count} sessions to end",
                timeout=timeout,
                count=len(clients),
            )
            while clients and self.reactor.seconds() < deadline:
                yield _sleep(self.reactor, 0.1)
        for client in list(clients):
            client.transport.write(
                fatal("57P01", "terminating connection due to administrator command")
            )
            if client.session is not None:
                client.session.close()
            client.transport.loseConnection()
        give_up = self.reactor.seconds() + 1.0
        while clients and self.reactor.seconds() < give_up:
            yield _sleep(self.reactor, 0.05)
        for client in list(clients):
            client.transport.abortConnection()
        yield self._drained(deadline)
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


def _sleep(reactor: IReactorTime, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def listen_reusing_port(reactor: Any, address: str, port: int, factory: Any) -> Any:
    """Listen with SO_REUSEPORT, as pgbouncer's ``so_reuseport``: every worker has its
    own listening socket on the same address, and the kernel spreads new connections
    over them."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        return reactor.adoptStreamPort(sock.fileno(), family, factory)
    finally:
        sock.close()  # the reactor keeps its own copy of the descriptor


def release_freed_memory() -> bool:
    """Give back to the system what start-up freed (the configuration's parse, the
    imports' temporaries): glibc keeps freed heap pages, about 1 MB of resident memory
    here. Returns whether that could be done (glibc's malloc_trim exists)."""
    gc.collect()
    # The process's own symbols: glibc's, without a library search (ldconfig) first.
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True

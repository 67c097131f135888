"""What all client connections share: configuration, backends, the live sessions.

``ProxyFactory`` builds a ``ClientProtocol`` per connection, opens both backends for it,
makes its ``Session`` and keeps the registry of live sessions with their cancel keys.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable

from twisted.internet import defer, ssl
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from twinkly.compare.comparator import Comparator
from twinkly.compare.shared_state import Monitor
from twinkly.config.schema import Config
from twinkly.ops.trace import ProtocolTrace
from twinkly.proxy.backend import BackendProtocol, connect_backend, startup_parameters
from twinkly.proxy.client import ClientProtocol
from twinkly.proxy.enforcer import Enforcer
from twinkly.proxy.session import Session, session_counters
from twinkly.tracking.contexts import ClientContexts
from twinkly.tracking.pairing import IPairObserver, PairCounter
from twinkly.wire.backend import BackendKeyData

log = Logger()


class ProxyFactory(Factory):
    """Shared state of all client connections."""

    protocol = ClientProtocol
    noisy = False

    def __init__(
        self,
        config: Config,
        reactor: object,
        observer_factory: Callable[[], IPairObserver] = PairCounter,
        monitor: Monitor | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.observer_factory = observer_factory
        self.monitor = monitor if config.comparison.enabled else None
        self.clients: set[ClientProtocol] = set()
        self.sessions: dict[int, tuple[bytes, Session]] = {}
        self.tls_options = _server_tls_options(config)
        self.router = make_router(config)
        self.sessions_total = 0
        self.timer: Callable[[], float] = time.monotonic  # statement timings
        self.connect_failures: Counter[str] = Counter()  # backend label -> failures
        self.closed_totals: Counter[str] = Counter()  # bytes and pauses of ended sessions
        self.status: object | None = None  # IStatus, for the admin console
        self.trace: ProtocolTrace | None = None  # debug.log-protocol
        application = config.debug.log_protocol_application
        self.trace_application = re.compile(application) if application else None

    def buildProtocol(self, addr: object) -> ClientProtocol:
        return ClientProtocol(self)

    def open_backends(
        self, client_parameters: dict[str, str], opened: list[BackendProtocol]
    ) -> defer.Deferred:
        """Connect both backends at once; fires with (truth, target) or fails naming
        the backend that could not be reached. A backend that connected while the
        other failed is closed."""
        proxy = self.config.proxy
        attempts = []
        gave_up = False

        def connected(protocol: BackendProtocol) -> BackendProtocol:
            if gave_up:  # the other backend failed first: do not leak this one
                protocol.terminate()
            else:
                opened.append(protocol)
            return protocol

        def failed(failure: Failure) -> Failure:
            nonlocal gave_up
            gave_up = True
            for protocol in opened:
                protocol.terminate()
            opened.clear()
            return failure

        for backend in (self.config.truth, self.config.target):
            parameters = startup_parameters(backend, client_parameters)
            d = connect_backend(self.reactor, backend, parameters, proxy.max_message_bytes)
            d.addErrback(self._connect_failed, backend.label)
            attempts.append(d.addCallback(connected))

        return defer.gatherResults(attempts, consumeErrors=True).addCallbacks(tuple, failed)

    def new_session(
        self, transport: object, truth: BackendProtocol, target: BackendProtocol
    ) -> Session:
        monitor = self.monitor
        observer: IPairObserver
        if monitor is not None:
            observer = Comparator(monitor, None, self.reactor.seconds)  # type: ignore[attr-defined]
        else:
            observer = self.observer_factory()
        session = Session(
            transport,
            truth,
            target,
            self.config,
            observer,
            self.reactor,  # type: ignore[arg-type]
            on_close=self.unregister,
            timer=self.timer,
        )
        session.router = self.router
        if monitor is not None:
            session.contexts = ClientContexts()
            session.analyze = monitor.cache.get
            rows = monitor.settings.max_compared_rows
            session.truth_tracker.sample_rows = session.target_tracker.sample_rows = rows
            settings = monitor.settings
            if settings.fail_on_differences or settings.fail_on_slow_queries:
                session.enforcer = Enforcer(
                    session, settings.hold_bytes, settings.fail_on_differences
                )
                observer.enforcer = session.enforcer  # type: ignore[attr-defined]
        return session

    def _connect_failed(self, failure: Failure, label: str) -> Failure:
        if getattr(failure.value, "sqlstate", "08006").startswith("08"):
            self.connect_failures[label] += 1
        return failure

    def register(self, session: Session) -> BackendKeyData:
        """Give the session Twinkly's own cancel key."""
        while True:
            process_id = secrets.randbelow(2**31 - 1) + 1
            if process_id not in self.sessions:
                break
        secret = os.urandom(4)
        self.sessions[process_id] = (secret, session)
        self.sessions_total += 1
        session.process_id = process_id
        if isinstance(session.pairer.observer, Comparator):
            session.pairer.observer.session_id = process_id
            session.pairer.observer.session_settings = session.truth_settings
            session.pairer.observer.sides = session.side_connections
        return BackendKeyData(process_id, secret)

    def unregister(self, session: Session) -> None:
        process_id = getattr(session, "process_id", None)
        if process_id is not None and self.sessions.pop(process_id, None) is not None:
            self.closed_totals.update(session_counters(session))

    def cancel(self, process_id: int, secret: bytes) -> None:
        entry = self.sessions.get(process_id)
        if entry is None or not secrets.compare_digest(entry[0], secret):
            log.info("ignoring cancel request with an unknown key")
            return
        entry[1].cancel(self.reactor)


def make_router(config: Config) -> Callable[[str], str | None] | None:
    """sql -> the backend ("postgresql" or "yugabytedb") it must run on alone, or None."""
    routes = [(re.compile(p), "postgresql") for p in config.proxy.postgres_only_patterns] + [
        (re.compile(p), "yugabytedb") for p in config.proxy.yugabyte_only_patterns
    ]
    if not routes:
        return None

    def route(sql: str) -> str | None:
        for pattern, backend in routes:
            if pattern.search(sql):
                return backend
        return None

    return route


def _server_tls_options(config: Config) -> ssl.CertificateOptions | None:
    cert_file, key_file = config.proxy.tls_cert_file, config.proxy.tls_key_file
    if not cert_file or not key_file:
        return None
    with open(cert_file, "rb") as f:
        cert = f.read()
    with open(key_file, "rb") as f:
        key = f.read()
    pair = ssl.PrivateCertificate.loadPEM(cert + b"\n" + key)
    # libpq 17 and later offer ALPN "postgresql" and expect it back, as servers do.
    return ssl.CertificateOptions(
        privateKey=pair.privateKey.original,
        certificate=pair.original,
        acceptableProtocols=[b"postgresql"],
    )

"""What all client connections share: configuration, backends, the live sessions.

``ProxyFactory`` builds a ``ClientProtocol`` per connection, opens both backends for it,
makes its ``Session`` and keeps the registry of live sessions with their cancel keys.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from twinkly.config.schema import Config
from twinkly.interfaces import IAdminConsoles, IComparison, IPairObserver, ISessionTracer
from twinkly.proxy.backend import BackendProtocol
from twinkly.proxy.client import ClientProtocol
from twinkly.proxy.keys import CancelKeys
from twinkly.proxy.limits import ConnectionLimits
from twinkly.proxy.opening import make_breaker, open_backends, session_hooks
from twinkly.proxy.routing import make_router
from twinkly.proxy.session import Session, session_counters
from twinkly.proxy.transports import IStreamTransport
from twinkly.tracking.pairing import PairCounter
from twinkly.wire.backend import BackendKeyData

if TYPE_CHECKING:
    from twisted.internet.ssl import CertificateOptions

__all__ = ["ProxyFactory", "make_router"]

log = Logger()


class ProxyFactory(Factory):
    """Shared state of all client connections.

    What the proxy does beyond relaying is given here, by the application wiring:
    ``comparison`` (the comparator of each session, the SQL analysis, the enforcement
    settings), ``admin`` (the console on the virtual database) and ``tracer`` (the
    protocol trace). Without them the factory is a plain dual-execution relay whose
    pairs go to ``observer_factory()``'s observer."""

    protocol = ClientProtocol
    noisy = False

    def __init__(
        self,
        config: Config,
        reactor: Any,
        observer_factory: Callable[[], IPairObserver] = PairCounter,
        *,
        comparison: IComparison | None = None,
        admin: IAdminConsoles | None = None,
        tracer: ISessionTracer | None = None,
        timer: Callable[[], float] = time.monotonic,
        keys: CancelKeys | None = None,
        forward_cancel: Callable[[int, int, bytes], None] | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.observer_factory = observer_factory
        self.comparison = comparison if config.comparison.enabled else None
        self.admin = admin
        self.tracer = tracer
        self.timer = timer  # statement timings: monotonic, so a clock step cannot look slow
        self.keys = keys or CancelKeys()
        # With several workers: (owner index, process id, secret) to the owning worker.
        self._forward_cancel = forward_cancel
        self.clients: set[ClientProtocol] = set()
        # Backends of ended sessions still sending answers owed (compared when they come):
        # a shutdown waits for them before the totals and the report are final.
        self.draining: set[BackendProtocol] = set()
        self.sessions: dict[int, tuple[bytes, Session]] = {}
        self.tls_options = _server_tls_options(config)
        self.router = make_router(config)
        self.sessions_total = 0
        self.connect_failures: Counter[str] = Counter()  # backend label -> failures
        self.closed_totals: Counter[str] = Counter()  # bytes and pauses of ended sessions
        self.breaker = make_breaker(self)  # the target's availability
        self.limits = ConnectionLimits(reactor, self._limits)

    def _limits(self) -> tuple[float, int, int]:
        proxy = self.config.proxy  # read per connection: a reload applies to new clients
        return (
            proxy.client_login_timeout,
            proxy.max_client_connections,
            proxy.max_startup_connections,
        )

    def buildProtocol(self, addr: object) -> ClientProtocol:
        return ClientProtocol(self)

    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration, for every session that starts from now on."""
        self.config = config
        self.router = make_router(config)

    def open_backends(
        self, client_parameters: dict[str, str], opened: list[BackendProtocol]
    ) -> defer.Deferred:
        """(truth, target or None): see twinkly/proxy/opening.py."""
        return open_backends(self, client_parameters, opened)

    def new_session(
        self,
        transport: IStreamTransport,
        truth: BackendProtocol,
        target: BackendProtocol | None,
        client_parameters: dict[str, str],
    ) -> tuple[Session, BackendKeyData]:
        """The session of a client whose backends are ready, registered under Twinkly's
        own cancel key (which the client gets in BackendKeyData)."""
        truth_key = truth.key
        process_id, secret = self.keys.allocate(
            truth_key.process_id if truth_key is not None else None, self.sessions
        )
        comparison = self.comparison if target is not None else None  # nothing to compare
        hooks = session_hooks(self, process_id, target is not None, self.unregister)
        session = Session(
            transport,
            truth,
            target,
            self.config,
            self.reactor,
            lambda facts, verdicts: self.observer_factory(),
            session_id=process_id,
            comparison=comparison,
            router=self.router,
            client_parameters=client_parameters,
            on_close=hooks.on_close,
            on_target_lost=hooks.on_target_lost,
            report_cut_short=hooks.report_cut_short,
            timer=self.timer,
        )
        self.sessions[process_id] = (secret, session)
        self.sessions_total += 1
        return session, BackendKeyData(process_id, secret)

    def _connect_failed(self, failure: Failure, label: str) -> Failure:
        if getattr(failure.value, "sqlstate", "08006").startswith("08"):
            self.connect_failures[label] += 1
        return failure

    def backend_unavailable(self, reason: str) -> None:
        """A backend could not be reached when a session started."""
        if self.comparison is not None:
            self.comparison.backend_unavailable(reason, self.reactor.seconds(), None)

    def unregister(self, session: Session) -> None:
        process_id = session.session_id
        if process_id is not None and self.sessions.pop(process_id, None) is not None:
            self.closed_totals.update(session_counters(session))
        for backend in (session.truth, session.target):
            if backend is not None and backend.draining:
                self.draining.add(backend)
                backend.after_drain = self.draining.discard

    def cancel(self, process_id: int, secret: bytes) -> None:
        owner = self.keys.owner(secret)
        if owner != self.keys.worker and self._forward_cancel is not None:
            self._forward_cancel(owner, process_id, secret)
            return
        entry = self.sessions.get(process_id)
        if entry is None or not secrets.compare_digest(entry[0], secret):
            log.info("ignoring cancel request with an unknown key")
            return
        entry[1].cancel(self.reactor)


def _server_tls_options(config: Config) -> CertificateOptions | None:
    cert_file, key_file = config.proxy.tls_cert_file, config.proxy.tls_key_file
    if not cert_file or not key_file:
        return None
    from twisted.internet import ssl  # pyOpenSSL: loaded only where TLS is configured

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

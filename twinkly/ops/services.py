"""The operations side of the running service: status and metrics over HTTP, the manhole,
the progress line, SIGHUP reload and the protocol trace, each attached to the
twistd service tree only when configured."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.application import internet, service
from twisted.logger import Logger

from twinkly.config.schema import Config, ConfigError
from twinkly.ops.live import LiveStatus
from twinkly.ops.status import IStatus
from twinkly.ops.trace import SessionTracer
from twinkly.proxy.factory import ProxyFactory

log = Logger()


def attach_operations(
    top: service.MultiService,
    factory: ProxyFactory,
    monitor: Any,
    tracer: SessionTracer | None,
    reactor: Any,
    config_path: str | None,
    manhole_port: int | None = None,
    apply_comparison: Callable[[Config], None] | None = None,
    *,
    serve_http: bool = True,
    allow_manhole: bool = True,
    shared: Callable[[LiveStatus], Any] | None = None,
) -> LiveStatus:
    """Add what ``monitoring`` and ``debug`` ask for under ``top``; returns the live
    status of this process. ``shared(status)`` gives the status the operator sees when
    several workers serve together (one worker's admin console speaks for all); a worker
    leaves the HTTP server to the supervisor, and only worker 0 holds the manhole."""
    config = factory.config
    status = LiveStatus(factory, monitor, tracer, reactor, config_path, apply_comparison)
    seen = shared(status) if shared is not None else status
    http = config.monitoring.http
    if http.enabled and serve_http:
        from twinkly.ops.http import make_site
        from twinkly.ops.metrics import make_metrics

        _, metrics = make_metrics(factory, monitor)
        site = make_site(seen, metrics)
        site.noisy = False
        server = internet.TCPServer(http.port, site, interface=http.listen_address)
        server.setServiceParent(top)
    manhole = config.monitoring.manhole
    if allow_manhole and (manhole.enabled or manhole_port is not None):
        if not manhole.users:
            raise ConfigError("monitoring.manhole.users: the manhole needs at least one user")
        from twinkly.ops.manhole import manhole_service

        namespace = {
            "service": top,
            "factory": factory,
            "sessions": factory.sessions,
            "monitor": monitor,
            "reporter": monitor.sink if monitor is not None else None,
            "config": config,
            "status": status,
            "trace": tracer,
        }
        port = manhole_port if manhole_port is not None else manhole.port
        manhole_service(
            port,
            dict(manhole.users),
            namespace,
            manhole.host_key,
            manhole.listen_address,
            reactor=reactor,
        ).setServiceParent(top)
    interval = config.monitoring.progress_interval
    if interval > 0:
        timer = internet.TimerService(interval, log_progress, status)
        timer.clock = reactor
        timer.setServiceParent(top)
    ReloadOnHangup(seen, reactor).setServiceParent(top)
    return status


def progress_line(status: LiveStatus) -> str:
    """Totals by outcome and the most mismatching fingerprints, in one line."""
    totals = status.totals()
    outcomes = ", ".join(f"{n} {name}" for name, n in totals["outcomes"].items() if n)
    line = (
        f"{totals['sessions']} sessions open ({totals['sessions_total']} in all),"
        f" {totals['statements']} statements: {outcomes or 'none yet'}"
    )
    monitor = status.monitor
    if monitor is not None:
        slow = monitor.events.get("slow_query", 0)
        if slow:
            line += f"; {slow} slow"
        top = monitor.top_mismatches(3)
        if top:
            shown = "; ".join(f"{fp} x{n} {statement[:60]!r}" for fp, n, statement in top)
            line += f"; top mismatches: {shown}"
    return line


def log_progress(status: LiveStatus) -> None:
    log.info("progress: {line}", line=progress_line(status))


class ReloadOnHangup(service.Service):
    """SIGHUP re-reads the configuration file without dropping a session."""

    # Twisted's Service says ``name = None`` unannotated (so: type None); IService: a str.
    name = "twinkly-reload"  # type: ignore[assignment]

    def __init__(self, status: IStatus, reactor: Any) -> None:
        self.status = status
        self.reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)

    def _hangup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        try:
            self.status.reload()  # which logs what changed
        except ConfigError as e:
            log.error("reload refused, the configuration is unchanged: {error}", error=str(e))

"""Application wiring: every part built once, each given its collaborators.

This is the one place that knows all layers. It builds the shared comparison state
(``Monitor``) with its events file and slow-query reporter, the protocol trace, the
admin console, the proxy factory and the operations services, and puts them under one
``MultiService`` for twistd.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from twisted.application import internet
from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime

from twinkly.app.service import IServiceReactor, ProxyService
from twinkly.compare.catalog import CatalogReader
from twinkly.compare.sessions import SessionComparisons
from twinkly.compare.shared_state import ComparisonSettings, Monitor
from twinkly.compare.values import NormalizationRules
from twinkly.compare.volatile import VolatileColumns
from twinkly.config.schema import AIConfig, BackendConfig, Config, ConfigError
from twinkly.ops.admin import AdminConsoles
from twinkly.ops.live import LiveStatus
from twinkly.ops.services import attach_operations
from twinkly.ops.status import IStatus
from twinkly.ops.trace import ProtocolTrace, SessionTracer
from twinkly.perf.explain import Explainer
from twinkly.perf.insight import HeuristicInsightProvider, IInsightProvider, LLMInsightProvider
from twinkly.perf.latency import SlowQuerySettings
from twinkly.perf.slow import SlowQueryReporter
from twinkly.proxy.backend import connect_backend
from twinkly.proxy.factory import ProxyFactory
from twinkly.proxy.keys import CancelKeys
from twinkly.report.bundles import BundleWriter
from twinkly.report.sink import FanOutSink, IEventSink, JsonLinesSink


class WorkerPlace(NamedTuple):
    """Which worker this process is, and where the workers' control sockets live."""

    number: int
    run_dir: str


def build_service(
    config: Config,
    reactor: IServiceReactor,
    config_path: str | None,
    manhole_port: int | None = None,
    worker: WorkerPlace | None = None,
) -> MultiService:
    """The whole running proxy for ``config``; ``worker`` when it is one of several
    worker processes (``proxy.workers``) under a supervisor."""
    # Without comparison there is nothing to judge and no events file to write.
    comparing = build_monitor(config, reactor) if config.comparison.enabled else None
    tracer = build_tracer(config, reactor)
    seen: IStatus | None = None  # made once the factory exists; the console reads it
    admin = AdminConsoles(config.proxy.admin.users, lambda: seen)
    # One of several workers: the others are reached through private control sockets.
    # Imported only then: a single process never loads twisted.web and prometheus_client
    # unless monitoring.http asks for them (a few MB of resident memory).
    siblings = None
    if worker is not None:
        from twinkly.ops.cluster import Workers

        siblings = Workers(reactor, worker.run_dir, config.proxy.workers, worker.number)
    factory = ProxyFactory(
        config,
        reactor,
        comparison=SessionComparisons(comparing, reactor.seconds) if comparing else None,
        admin=admin,
        tracer=tracer,
        keys=CancelKeys(worker.number if worker else 0),
        forward_cancel=siblings.forward_cancel if siblings else None,
    )
    top = MultiService()
    ProxyService(
        factory, reactor, comparing, tracer, reuse_port=worker is not None
    ).setServiceParent(top)
    metrics = peers = None
    if siblings is not None:
        from twinkly.ops.cluster import PeerStates
        from twinkly.ops.metrics import make_metrics

        _, metrics = make_metrics(factory, comparing)
        peers = PeerStates(siblings)

    def shared(status: LiveStatus) -> IStatus:
        if peers is None:
            return status
        from twinkly.ops.cluster import ClusterStatus

        return ClusterStatus(status, peers, metrics, reactor.seconds())

    live = attach_operations(
        top,
        factory,
        comparing,
        tracer,
        reactor,
        config_path,
        manhole_port,
        lambda new: apply_comparison(comparing, new),
        serve_http=worker is None,
        allow_manhole=worker is None or worker.number == 0,
        shared=shared,
    )
    seen = shared(live)
    if worker is not None and peers is not None and metrics is not None:
        from twinkly.ops.cluster import POLL_SECONDS, control_site, control_socket

        path = control_socket(worker.run_dir, worker.number)
        site = control_site(live, metrics, factory.cancel)
        internet.UNIXServer(path, site, mode=0o600, wantPID=False).setServiceParent(top)
        poller = internet.TimerService(POLL_SECONDS, peers.poll)
        poller.clock = reactor
        poller.setServiceParent(top)
    return top


def build_tracer(config: Config, reactor: IReactorTime) -> SessionTracer:
    """debug.log-protocol: every session traced from its start-up; otherwise the file
    is opened at the first TRACE of the admin console."""
    debug = config.debug

    def open_trace(sessions: frozenset[int] | None) -> ProtocolTrace:
        path = Path(debug.log_protocol_file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return ProtocolTrace(
                str(path),
                debug.log_protocol_max_bytes,
                reactor.seconds,
                redact=config.reporting.redact,
                sessions=sessions,
            )
        except OSError as e:
            raise ConfigError(f"debug.log-protocol-file: cannot write {path}: {e}") from None

    return SessionTracer(open_trace, debug.log_protocol, debug.log_protocol_application)


def build_monitor(config: Config, reactor: IServiceReactor) -> Monitor:
    """The comparison state shared by all sessions, with its events file."""
    settings = comparison_settings(config)
    reporting = config.reporting
    sink: IEventSink = JsonLinesSink(
        reporting.events_file,
        reactor,
        flush_interval=reporting.flush_interval,
        fsync=reporting.fsync,
    )
    if config.reporting.bundles:
        bundles = BundleWriter(config.reporting.bundles, reactor, redacted=config.reporting.redact)
        sink = FanOutSink(sink, bundles)
    monitor: Monitor | None = None

    def emit(event: dict) -> bool:  # the reporter writes through the monitor it serves
        assert monitor is not None
        return monitor.emit(event)

    monitor = Monitor(
        settings,
        sink,
        (config.truth.label, config.target.label),
        clock=reactor.seconds,
        slow=build_slow_reporter(config, reactor, emit),
        volatile=build_volatile_columns(config, reactor, emit),
    )
    return monitor


def build_volatile_columns(
    config: Config, reactor: IServiceReactor, emit: Callable[[dict], bool]
) -> VolatileColumns:
    """The write history, with the catalog read on side connections to the truth."""

    def connect(backend: BackendConfig, parameters: dict[str, str]):  # type: ignore[no-untyped-def]
        return connect_backend(reactor, backend, parameters, config.proxy.max_message_bytes)

    auto = config.comparison.volatile_columns == "auto"
    return VolatileColumns(
        CatalogReader(connect, reactor) if auto else None,
        emit,
        reactor.seconds,
        auto=auto,
        configured=config.comparison.volatile_column_list,
        redact=config.reporting.redact,
    )


def build_slow_reporter(
    config: Config, reactor: IServiceReactor, emit: Callable[[dict], bool]
) -> SlowQueryReporter:
    """Plans on side connections, and the insight providers that read them."""

    def connect(backend: BackendConfig, parameters: dict[str, str]):  # type: ignore[no-untyped-def]
        return connect_backend(reactor, backend, parameters, config.proxy.max_message_bytes)

    explainer = Explainer(config.comparison.explain, connect, reactor)  # type: ignore[arg-type]
    providers: list[IInsightProvider] = [HeuristicInsightProvider()]
    ai = config.comparison.ai
    if ai.enabled:
        providers.append(build_llm_provider(ai, reactor))
    return SlowQueryReporter(
        emit,
        reactor.seconds,
        explainer,
        providers,
        redact_for_providers=ai.redact,
    )


def build_llm_provider(ai: AIConfig, reactor: IServiceReactor) -> IInsightProvider:
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, pool=pool))
    return LLMInsightProvider(
        client,
        ai.endpoint,
        ai.model,
        os.environ.get(ai.api_key_env) or None,
        ai.timeout,
        ai.max_per_minute,
        ai.redact,
        reactor,
    )


def comparison_settings(config: Config) -> ComparisonSettings:
    """What comparators read as they go (replaced whole on reload)."""
    comparison = config.comparison
    return ComparisonSettings(
        enabled=comparison.enabled,
        fail_on_differences=comparison.fail_on_differences,
        log_differences_only=comparison.log_differences_only,
        exclude_patterns=tuple(re.compile(p) for p in comparison.exclude_patterns),
        rules=NormalizationRules(
            float_tolerance=comparison.float_tolerance,
            numeric_scale=comparison.numeric_scale,
            timestamptz_as_instant=comparison.timestamptz_as_instant,
            jsonb_key_order=comparison.jsonb_key_order,
        ),
        max_sample_rows=comparison.max_sample_rows,
        max_compared_rows=comparison.max_compared_rows,
        sample_rate=comparison.sample_rate,
        hold_bytes=comparison.hold_bytes,
        log_errors=config.monitoring.log_errors,
        redact=config.reporting.redact,
        slow=SlowQuerySettings(
            enabled=comparison.report_slow_queries,
            ratio=comparison.slow_query_ratio,
            min_seconds=comparison.slow_query_min_ms / 1000,
            min_samples=comparison.slow_query_min_samples,
            interval=comparison.slow_query_interval,
        ),
        fail_on_slow_queries=comparison.fail_on_slow_queries,
    )


def apply_comparison(monitor: Monitor | None, config: Config) -> None:
    """Reload: new settings for every session's next statement."""
    if monitor is None:
        return
    monitor.settings = comparison_settings(config)
    monitor.latency.settings = monitor.settings.slow
    if monitor.slow.explainer is not None:
        monitor.slow.explainer.settings = config.comparison.explain

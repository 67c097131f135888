"""Application wiring: every part built once, each given its collaborators.

This is the one place that knows all layers. It builds the shared comparison state
(``Monitor``) with its events file and slow-query reporter, the protocol trace, the
admin console, the proxy factory and the operations services, and puts them under one
``MultiService`` for twistd.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService

from twinkly.app.service import ProxyService
from twinkly.compare.sessions import SessionComparisons
from twinkly.compare.shared_state import ComparisonSettings, Monitor
from twinkly.compare.values import NormalizationRules
from twinkly.config.schema import AIConfig, BackendConfig, Config, ConfigError
from twinkly.ops.admin import AdminConsoles
from twinkly.ops.live import LiveStatus
from twinkly.ops.services import attach_operations
from twinkly.ops.trace import ProtocolTrace, SessionTracer
from twinkly.perf.explain import Explainer
from twinkly.perf.insight import HeuristicInsightProvider, IInsightProvider, LLMInsightProvider
from twinkly.perf.latency import SlowQuerySettings
from twinkly.perf.slow import SlowQueryReporter
from twinkly.proxy.backend import connect_backend
from twinkly.proxy.factory import ProxyFactory
from twinkly.report.bundles import BundleWriter
from twinkly.report.sink import FanOutSink, IEventSink, JsonLinesSink


def build_service(
    config: Config, reactor: Any, config_path: str | None, manhole_port: int | None = None
) -> MultiService:
    """The whole running proxy for ``config``."""
    # Without comparison there is nothing to judge and no events file to write.
    comparing = build_monitor(config, reactor) if config.comparison.enabled else None
    tracer = build_tracer(config, reactor)
    status: LiveStatus | None = None  # made once the factory exists; the console reads it
    admin = AdminConsoles(config.proxy.admin.users, lambda: status)
    factory = ProxyFactory(
        config,
        reactor,
        comparison=SessionComparisons(comparing, reactor.seconds) if comparing else None,
        admin=admin,
        tracer=tracer,
    )
    top = MultiService()
    ProxyService(factory, reactor, comparing, tracer).setServiceParent(top)
    status = attach_operations(
        top,
        factory,
        comparing,
        tracer,
        reactor,
        config_path,
        manhole_port,
        lambda new: apply_comparison(comparing, new),
    )
    return top


def build_tracer(config: Config, reactor: Any) -> SessionTracer:
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


def build_monitor(config: Config, reactor: object) -> Monitor:
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
        clock=reactor.seconds,  # type: ignore[attr-defined]
        slow=build_slow_reporter(config, reactor, emit),
    )
    return monitor


def build_slow_reporter(config: Config, reactor: Any, emit: Any) -> SlowQueryReporter:
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
        reactor.seconds,  # type: ignore[attr-defined]
        explainer,
        providers,
        redact_for_providers=ai.redact,
    )


def build_llm_provider(ai: AIConfig, reactor: object) -> object:
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

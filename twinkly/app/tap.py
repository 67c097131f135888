"""twistd integration: ``twistd -n twinkly --config conf/twinkly.conf``."""

from __future__ import annotations

import re

from twisted.application.service import MultiService
from twisted.python import usage

from twinkly.compare.shared_state import ComparisonSettings, Monitor
from twinkly.config.schema import AIConfig, BackendConfig, Config, ConfigError, load
from twinkly.perf.latency import SlowQuerySettings
from twinkly.perf.slow import SlowQueryReporter


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    try:
        return (host.strip("[]") or "127.0.0.1", int(port))
    except ValueError:
        raise usage.UsageError(f"--listen: expected HOST:PORT or PORT, got {value!r}") from None


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Twinkly: a PostgreSQL wire-protocol proxy that runs every statement on two"
        " databases, answers with the source of truth, and pairs both answers for"
        " comparison. Options given here override the configuration file."
        " Logs as JSON lines: twistd --logger twinkly.ops.logs.json_observer -n twinkly."
        " SIGHUP reloads patterns, thresholds and switches without dropping sessions."
    )
    optParameters = [
        ["config", "c", "conf/twinkly.conf", "HOCON configuration file."],
        ["listen", "l", None, "Listen on HOST:PORT (overrides proxy.listen-*)."],
        [
            "source-of-truth",
            None,
            None,
            "postgresql or yugabytedb: whose answers the client gets"
            " (overrides comparison.source-of-truth).",
        ],
        [
            "manhole-port",
            None,
            None,
            "Open the SSH manhole on this port of monitoring.manhole.listen-address"
            " (overrides monitoring.manhole.port and enables it; needs"
            " monitoring.manhole.users).",
        ],
    ]

    def postOptions(self) -> None:
        try:
            config = load(self["config"])
            config = config.with_overrides(
                listen=_listen(self["listen"]) if self["listen"] else None,
                source_of_truth=self["source-of-truth"],
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["manhole-port"] is not None:
            try:
                port = int(self["manhole-port"])
            except ValueError:
                raise usage.UsageError("--manhole-port: expected a port number") from None
            if not 0 <= port <= 65535 or not config.monitoring.manhole.users:
                raise usage.UsageError(
                    "--manhole-port: needs a port number and monitoring.manhole.users"
                )
            self["manhole-port"] = port
        self["parsed"] = config


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    from twinkly.app.service import ProxyService
    from twinkly.proxy.factory import ProxyFactory

    config = options["parsed"]
    monitor = build_monitor(config, reactor)
    top = MultiService()
    factory = ProxyFactory(config, reactor, monitor=monitor)
    ProxyService(factory, reactor).setServiceParent(top)
    from twinkly.ops.services import attach_operations

    try:
        attach_operations(top, factory, reactor, options["config"], options["manhole-port"])
    except ConfigError as e:
        raise SystemExit(f"twinkly: {e}") from None
    return top


def build_monitor(config: Config, reactor: object) -> Monitor:
    """The comparison state shared by all sessions, with its events file."""
    from twinkly.report.sink import IEventSink, JsonLinesSink

    settings = comparison_settings(config)
    sink: IEventSink = JsonLinesSink(config.reporting.events_file, reactor)
    if config.reporting.bundles:
        from twinkly.report.bundles import BundleWriter
        from twinkly.report.sink import FanOutSink

        bundles = BundleWriter(config.reporting.bundles, reactor, redacted=config.reporting.redact)
        sink = FanOutSink(sink, bundles)
    monitor = Monitor(
        settings, sink, (config.truth.label, config.target.label), clock=reactor.seconds
    )
    monitor.slow = build_slow_reporter(config, reactor, monitor)
    return monitor


def build_slow_reporter(config: Config, reactor: object, monitor: Monitor) -> SlowQueryReporter:
    """Plans on side connections, and the insight providers that read them."""
    from twinkly.perf.explain import Explainer
    from twinkly.perf.insight import HeuristicInsightProvider, IInsightProvider
    from twinkly.proxy.backend import connect_backend

    def connect(backend: BackendConfig, parameters: dict[str, str]):  # type: ignore[no-untyped-def]
        return connect_backend(reactor, backend, parameters, config.proxy.max_message_bytes)

    explainer = Explainer(config.comparison.explain, connect, reactor)  # type: ignore[arg-type]
    providers: list[IInsightProvider] = [HeuristicInsightProvider()]
    ai = config.comparison.ai
    if ai.enabled:
        providers.append(build_llm_provider(ai, reactor))
    return SlowQueryReporter(
        monitor.emit,
        reactor.seconds,  # type: ignore[attr-defined]
        explainer,
        providers,
        redact_for_providers=ai.redact,
    )


def build_llm_provider(ai: AIConfig, reactor: object) -> object:
    import os

    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from twinkly.perf.insight import LLMInsightProvider

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
    from twinkly.compare.values import NormalizationRules

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


def apply_comparison(factory: object, config: Config) -> None:
    """Reload: new settings for every session's next statement."""
    monitor = factory.monitor  # type: ignore[attr-defined]
    if monitor is None:
        return
    monitor.settings = comparison_settings(config)
    monitor.latency.settings = monitor.settings.slow
    if monitor.slow.explainer is not None:
        monitor.slow.explainer.settings = config.comparison.explain

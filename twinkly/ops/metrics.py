"""Prometheus metrics, read from the live state at scrape time.

Nothing is counted twice: the counters the proxy keeps anyway (outcomes, events,
sessions, bytes, pauses, connect failures, timings) are turned into metric families when
Prometheus asks, through a custom collector on a registry of our own. The hot path pays
for no metrics library call.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from twinkly.compare import lane
from twinkly.perf.latency import LatencyHistogram
from twinkly.proxy.session import session_counters
from twinkly.tracking import responses
from twinkly.wire import accel

# Upper bounds of the latency histograms' buckets, in seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SCALE = 8 / math.log(2)


class ProxyCollector:
    """Collects from a ProxyFactory and its Monitor."""

    def __init__(self, factory: Any, monitor: Any) -> None:
        self.factory = factory
        self.monitor = monitor

    def collect(self) -> Iterator[Any]:
        factory = self.factory
        live = [session for _, session in factory.sessions.values()]
        build = GaugeMetricFamily(
            "twinkly_build_info",
            "Always 1; accelerator, tracker (and pairer) and lane say which hot-path"
            " implementation runs (c or python).",
            labels=["accelerator", "tracker", "lane"],
        )
        build.add_metric([accel.IMPLEMENTATION, responses.IMPLEMENTATION, lane.IMPLEMENTATION], 1)
        yield build
        yield GaugeMetricFamily("twinkly_sessions", "Client sessions open now.", len(live))
        yield CounterMetricFamily(
            "twinkly_sessions", "Client sessions started.", factory.sessions_total
        )
        totals = dict(factory.closed_totals)
        for session in live:
            for key, value in session_counters(session).items():
                totals[key] = totals.get(key, 0) + value
        moved = CounterMetricFamily(
            "twinkly_bytes", "Bytes moved, by leg and direction.", labels=["leg", "direction"]
        )
        for key, leg, direction in (
            ("bytes_from_client", "client", "in"),
            ("bytes_to_client", "client", "out"),
            ("bytes_from_truth", "truth", "in"),
            ("bytes_from_target", "target", "in"),
        ):
            moved.add_metric([leg, direction], totals.get(key, 0))
        yield moved
        pauses = CounterMetricFamily(
            "twinkly_backpressure_pauses",
            "Times a connection was paused for flow control.",
            labels=["paused"],
        )
        pauses.add_metric(["client"], totals.get("pauses_client", 0))
        pauses.add_metric(["truth"], totals.get("pauses_truth", 0))
        yield pauses
        failures = CounterMetricFamily(
            "twinkly_backend_connect_failures",
            "Backend connections that could not be made.",
            labels=["backend"],
        )
        config = factory.config
        for label in (config.truth.label, config.target.label):
            failures.add_metric([label], factory.connect_failures.get(label, 0))
        yield failures
        breaker = getattr(factory, "breaker", None)
        if breaker is not None:
            yield CounterMetricFamily(
                "twinkly_sessions_not_compared",
                "Sessions that started without the target (unavailable): served, not compared.",
                breaker.sessions_not_compared,
            )
            yield CounterMetricFamily(
                "twinkly_target_outages", "Times the target became unavailable.", breaker.outages
            )
            yield GaugeMetricFamily(
                "twinkly_target_available",
                "1 when the target takes connections, 0 while it is unavailable.",
                1 if breaker.available else 0,
            )
        limits = getattr(factory, "limits", None)
        if limits is not None:
            refused = CounterMetricFamily(
                "twinkly_clients_refused",
                "Client connections refused or closed by a limit.",
                labels=["limit"],
            )
            refused.add_metric(["max-connections"], limits.refused)
            refused.add_metric(["login-timeout"], limits.login_timeouts)
            yield refused
        monitor = self.monitor
        if monitor is None:
            return
        yield from _monitor_families(monitor)


def _monitor_families(monitor: Any) -> Iterator[Any]:
    outcomes = CounterMetricFamily(
        "twinkly_statements",
        "Statements by comparison outcome (each statement has exactly one).",
        labels=["outcome"],
    )
    for outcome, count in monitor.outcomes.items():
        outcomes.add_metric([outcome], count)
    yield outcomes
    events = CounterMetricFamily("twinkly_events", "Report events by kind.", labels=["kind"])
    for kind, count in monitor.events.items():
        events.add_metric([kind], count)
    yield events
    latency = HistogramMetricFamily(
        "twinkly_statement_duration_seconds",
        "Live execution time of compared statements, per backend.",
        labels=["backend", "role"],
    )
    book = monitor.latency
    for role, label, histogram in (
        ("truth", monitor.truth_label, book.truth_all),
        ("target", monitor.target_label, book.target_all),
    ):
        latency.add_metric([label, role], _buckets(histogram), histogram.total)
    yield latency
    yield GaugeMetricFamily(
        "twinkly_fingerprints", "Fingerprints whose timings are kept.", len(book.entries)
    )


def _buckets(histogram: LatencyHistogram) -> list[tuple[str, float]]:
    """Our log-scale buckets folded into Prometheus' cumulative ``le`` buckets (a bucket
    counts under the first bound at or above its own upper edge: within 9 %)."""
    counts = [0] * (len(BUCKETS) + 1)
    for index, count in histogram.buckets.items():
        upper = math.exp((index + 1) / _SCALE) * 1e-6
        slot = next((i for i, bound in enumerate(BUCKETS) if upper <= bound), len(BUCKETS))
        counts[slot] += count
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
        running += count
        out.append((bound, running))
    return out


def make_metrics(factory: Any, monitor: Any = None) -> tuple[CollectorRegistry, Any]:
    """A registry of our own (not the process-global one) and the function the HTTP
    server calls for ``/metrics``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(factory, monitor))  # type: ignore[arg-type]

    def metrics() -> tuple[bytes, str]:
        return generate_latest(registry), CONTENT_TYPE_LATEST

    return registry, metrics

"""Prometheus metrics read from the live state: names, labels and values."""

from __future__ import annotations

from collections import Counter

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from twinkly.compare.shared_state import ComparisonSettings, Monitor
from twinkly.config.schema import loads
from twinkly.ops.metrics import BUCKETS, _buckets, make_metrics
from twinkly.perf.latency import LatencyHistogram
from twinkly.report.sink import MemorySink

CONFIG = "proxy { postgresql { label = pg15, port = 1 }, yugabytedb { label = pg18, port = 2 } }"


class FakeFactory:
    def __init__(self) -> None:
        self.config = loads(CONFIG)
        self.sessions: dict = {}
        self.sessions_total = 3
        self.connect_failures = Counter({"pg18": 2})
        self.closed_totals = Counter({"bytes_from_client": 100, "pauses_truth": 4})
        self.monitor = Monitor(ComparisonSettings(), MemorySink(), ("pg15", "pg18"))


class MetricsTests(SynchronousTestCase):
    def scrape(self, factory: FakeFactory) -> dict:
        _, metrics = make_metrics(factory, factory.monitor)
        body, content_type = metrics()
        self.assertTrue(content_type.startswith("text/plain"))
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = sample.value
        return samples

    def test_counters_come_from_the_live_state(self) -> None:
        factory = FakeFactory()
        factory.monitor.count("matched", 5)
        factory.monitor.count("one_sided_error")
        factory.monitor.events["result_mismatch"] += 2
        samples = self.scrape(factory)
        self.assertEqual(samples[("twinkly_sessions", ())], 0)
        self.assertEqual(samples[("twinkly_sessions_total", ())], 3)
        self.assertEqual(samples[("twinkly_statements_total", (("outcome", "matched"),))], 5)
        outcome = (("outcome", "one_sided_error"),)
        self.assertEqual(samples[("twinkly_statements_total", outcome)], 1)
        self.assertEqual(samples[("twinkly_statements_total", (("outcome", "dropped"),))], 0)
        kind = (("kind", "result_mismatch"),)
        self.assertEqual(samples[("twinkly_events_total", kind)], 2)
        self.assertEqual(
            samples[("twinkly_backend_connect_failures_total", (("backend", "pg18"),))], 2
        )
        self.assertEqual(
            samples[("twinkly_bytes_total", (("direction", "in"), ("leg", "client")))], 100
        )
        self.assertEqual(samples[("twinkly_backpressure_pauses_total", (("paused", "truth"),))], 4)

    def test_build_info_names_the_accelerator(self) -> None:
        from twinkly.compare import lane
        from twinkly.tracking import responses
        from twinkly.wire import accel

        samples = self.scrape(FakeFactory())
        labels = (
            ("accelerator", accel.IMPLEMENTATION),
            ("lane", lane.IMPLEMENTATION),
            ("tracker", responses.IMPLEMENTATION),
        )
        key = ("twinkly_build_info", labels)
        self.assertEqual(samples[key], 1)

    def test_latency_histograms_per_backend(self) -> None:
        factory = FakeFactory()
        book = factory.monitor.latency
        for _ in range(3):
            book.record("f", "select 1", 0.0004, 0.02, 0.0)
        samples = self.scrape(factory)
        target = (("backend", "pg18"), ("role", "target"))
        count = samples[("twinkly_statement_duration_seconds_count", target)]
        self.assertEqual(count, 3)
        self.assertAlmostEqual(samples[("twinkly_statement_duration_seconds_sum", target)], 0.06)
        le = dict((*target, ("le", "0.01")))
        self.assertEqual(
            samples[("twinkly_statement_duration_seconds_bucket", tuple(sorted(le.items())))], 0
        )
        le["le"] = "0.025"
        self.assertEqual(
            samples[("twinkly_statement_duration_seconds_bucket", tuple(sorted(le.items())))], 3
        )

    def test_buckets_are_cumulative_and_end_in_infinity(self) -> None:
        histogram = LatencyHistogram()
        for seconds in (0.0001, 0.003, 0.003, 20.0):
            histogram.record(seconds)
        folded = _buckets(histogram)
        self.assertEqual(len(folded), len(BUCKETS) + 1)
        self.assertEqual(folded[-1], ("+Inf", 4))
        counts = [count for _, count in folded]
        self.assertEqual(counts, sorted(counts))
        self.assertEqual(dict(folded)["0.0005"], 1)
        self.assertEqual(dict(folded)["0.005"], 3)
        self.assertEqual(dict(folded)["10.0"], 3)

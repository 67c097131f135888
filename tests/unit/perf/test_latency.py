"""Latency histograms and the slow-query verdicts drawn from them."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from twinkly.perf.latency import NOTHING, LatencyBook, LatencyHistogram, SlowQuerySettings

MS = 0.001


class HistogramTests(SynchronousTestCase):
    def test_quantiles_within_the_bucket_precision(self) -> None:
        histogram = LatencyHistogram()
        generator = random.Random(7)
        values = [generator.uniform(0.1, 500) * MS for _ in range(5000)]
        self.assertGreater(len(set(values)), 4900)
        for value in values:
            histogram.record(value)
        ordered = sorted(values)
        for q in (0.5, 0.95):
            exact = ordered[int(q * len(ordered)) - 1]
            got = histogram.quantile(q)
            assert got is not None
            self.assertLess(abs(got - exact) / exact, 0.05, (q, got, exact))
        self.assertEqual(histogram.count, 5000)
        self.assertEqual(histogram.max, max(values))

    def test_memory_is_bounded_by_the_range_not_the_count(self) -> None:
        histogram = LatencyHistogram()
        for i in range(100_000):
            histogram.record((i % 1000 + 1) * MS)
        # 1 ms .. 1 s is ten doublings: at most 8 buckets each (+1 for the edge).
        self.assertLessEqual(len(histogram.buckets), 81)

    def test_empty_and_tiny_values(self) -> None:
        histogram = LatencyHistogram()
        self.assertIsNone(histogram.quantile(0.5))
        self.assertEqual(histogram.snapshot()["p50_ms"], None)
        histogram.record(0.0)
        histogram.record(1e-9)
        self.assertEqual(histogram.count, 2)
        self.assertLessEqual(histogram.quantile(0.5), 2e-6)

    def test_quantile_never_exceeds_the_maximum(self) -> None:
        histogram = LatencyHistogram()
        histogram.record(0.0123)
        self.assertEqual(histogram.quantile(1.0), 0.0123)
        self.assertEqual(histogram.snapshot()["max_ms"], 12.3)


class BookTests(SynchronousTestCase):
    def book(self, **kwargs: object) -> LatencyBook:
        settings = {"ratio": 4.0, "min_seconds": 10 * MS, "min_samples": 5, "interval": 60.0}
        settings.update(kwargs)
        return LatencyBook(SlowQuerySettings(**settings))  # type: ignore[arg-type]

    def test_slow_needs_both_the_ratio_and_the_margin(self) -> None:
        book = self.book(min_samples=1000)
        # 5x slower but only 4 ms slower: not slow.
        self.assertIs(book.record("f1", "q", 1 * MS, 5 * MS, 0.0), NOTHING)
        # 50 ms slower but only 2x: not slow.
        self.assertIs(book.record("f2", "q", 50 * MS, 100 * MS, 0.0), NOTHING)
        # 4x and 30 ms slower: slow.
        self.assertTrue(book.record("f3", "q", 10 * MS, 40 * MS, 0.0).slow)
        # Faster on the target: never slow.
        self.assertIs(book.record("f4", "q", 100 * MS, 1 * MS, 0.0), NOTHING)

    def test_rate_limited_per_fingerprint_with_a_count_of_what_was_left_out(self) -> None:
        book = self.book(min_samples=1000)
        self.assertTrue(book.record("f", "q", 1 * MS, 50 * MS, 0.0).slow)
        for t in (1.0, 2.0, 3.0):
            self.assertFalse(book.record("f", "q", 1 * MS, 50 * MS, t).slow)
        # Another fingerprint is not held back by this one's limit.
        self.assertTrue(book.record("g", "q", 1 * MS, 50 * MS, 3.0).slow)
        verdict = book.record("f", "q", 1 * MS, 50 * MS, 61.0)
        self.assertTrue(verdict.slow)
        self.assertEqual(verdict.suppressed, 3)

    def test_regression_once_per_crossing_after_the_minimum_samples(self) -> None:
        book = self.book(min_samples=5, interval=1e9)
        verdicts = [book.record("f", "q", 2 * MS, 40 * MS, float(i)) for i in range(4)]
        self.assertTrue(all(v.regression is None for v in verdicts))
        fifth = book.record("f", "q", 2 * MS, 40 * MS, 5.0)
        self.assertIsNotNone(fifth.regression)
        self.assertGreater(fifth.regression, 15)
        # Still regressed: no second event at the next judgement.
        later = [book.record("f", "q", 2 * MS, 40 * MS, 6.0 + i) for i in range(16)]
        self.assertTrue(all(v.regression is None for v in later))

    def test_regression_rearms_when_the_median_recovers(self) -> None:
        book = self.book(min_samples=1, interval=1e9)
        self.assertIsNotNone(book.record("f", "q", 2 * MS, 40 * MS, 0.0).regression)
        for i in range(200):  # the target gets as fast as the truth
            book.record("f", "q", 2 * MS, 2 * MS, 1.0 + i)
        entry = book.get("f")
        assert entry is not None
        self.assertFalse(entry.regressed)
        crossed = [book.record("f", "q", 2 * MS, 80 * MS, 300.0 + i) for i in range(400)]
        self.assertEqual(sum(v.regression is not None for v in crossed), 1)

    def test_disabled_still_keeps_the_timings(self) -> None:
        book = self.book(enabled=False)
        self.assertIs(book.record("f", "q", 1 * MS, 500 * MS, 0.0), NOTHING)
        self.assertEqual(book.snapshot()[0]["executions"], 1)

    def test_fingerprints_are_capped_least_recent_first(self) -> None:
        book = self.book(max_fingerprints=3)
        for name in ("a", "b", "c"):
            book.record(name, name, MS, MS, 0.0)
        book.record("a", "a", MS, MS, 0.0)  # a is now the most recent
        book.record("d", "d", MS, MS, 0.0)
        self.assertEqual(list(book.entries), ["c", "a", "d"])
        self.assertEqual(book.evicted, 1)

    def test_snapshot_and_reset(self) -> None:
        book = self.book()
        book.record("f", "SELECT $1", 2 * MS, 6 * MS, 0.0)
        snapshot = book.snapshot()[0]
        self.assertEqual(snapshot["statement"], "SELECT $1")
        self.assertEqual(snapshot["truth"]["count"], 1)
        self.assertLess(abs(snapshot["p50_ratio"] - 3.0), 0.3)
        book.reset()
        self.assertEqual(book.snapshot(), [])

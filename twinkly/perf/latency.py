"""Per-fingerprint latency on both backends, and the verdicts drawn from it.

Every statement's live execution on each backend is timed by its ResponseTracker (from
the moment it could start there to its CommandComplete or ErrorResponse); nothing is
ever run again to be timed. The timings go into fixed logarithmic histograms, eight
buckets per doubling (quantiles within about 5 %), kept over the range of buckets seen
(C) or sparse (Python): a fingerprint whose timings cluster costs a few hundred bytes,
and the number of fingerprints is capped (least recently seen dropped first), so memory
stays bounded whatever the load.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from twinkly.wire.accel import Histogram, record_pair

BUCKETS_PER_DOUBLING = 8  # bucket_of (twinkly/wire/accel.py, C or Python) assumes 8


@dataclass(frozen=True)
class SlowQuerySettings:
    enabled: bool = True  # comparison.report-slow-queries
    ratio: float = 4.0  # target at least this many times slower...
    min_seconds: float = 0.010  # ...and at least this much slower
    min_samples: int = 20  # executions before a fingerprint's p50 ratio is judged
    interval: float = 60.0  # seconds between two slow_query events of one fingerprint
    max_fingerprints: int = 5000

    def slower(self, truth: float, target: float) -> bool:
        return target >= truth * self.ratio and target - truth >= self.min_seconds


class LatencyHistogram(Histogram):  # type: ignore[misc, valid-type]
    """Counts of timings in logarithmic buckets: bucket ``i`` holds values in
    ``[2**(i/8), 2**((i+1)/8))`` microseconds. The counting (``add``, ``record``,
    ``quantile``, ``buckets``, ``count``, ``total``, ``max``) is twinkly.wire.accel's
    ``Histogram``, in C when built."""

    __slots__ = ()

    def snapshot(self) -> dict:
        p50, p95 = self.quantile(0.5), self.quantile(0.95)
        return {
            "count": self.count,
            "p50_ms": _ms(p50),
            "p95_ms": _ms(p95),
            "max_ms": _ms(self.max if self.count else None),
            "mean_ms": _ms(self.total / self.count if self.count else None),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class FingerprintLatency:
    """Both backends' timings of one fingerprint, and its event bookkeeping."""

    __slots__ = (
        "executions",
        "fingerprint",
        "last_event",
        "last_slow",
        "regressed",
        "statement",
        "suppressed",
        "target",
        "truth",
    )

    def __init__(self, fingerprint: str, statement: str) -> None:
        self.fingerprint = fingerprint
        self.statement = statement  # as reported (redacted when redaction is on)
        self.truth = LatencyHistogram()
        self.target = LatencyHistogram()
        self.executions = 0
        self.last_slow: float | None = None  # when the last slow_query event was written
        self.suppressed = 0  # slow executions since then that wrote no event
        self.regressed = False  # the p50 ratio is past the threshold (event written)
        self.last_event: dict | None = None  # id, plan summaries, insights of the last one

    def p50_ratio(self) -> float | None:
        truth, target = self.truth.quantile(0.5), self.target.quantile(0.5)
        if truth is None or target is None or truth <= 0:
            return None
        return target / truth

    def snapshot(self) -> dict:
        ratio = self.p50_ratio()
        return {
            "fingerprint": self.fingerprint,
            "statement": self.statement,
            "executions": self.executions,
            "truth": self.truth.snapshot(),
            "target": self.target.snapshot(),
            "p50_ratio": None if ratio is None else round(ratio, 3),
        }


@dataclass(frozen=True)
class Verdict:
    """What one execution's timings call for."""

    slow: bool = False  # write a slow_query event for this execution
    suppressed: int = 0  # slow executions of this fingerprint left out since the last event
    regression: float | None = None  # the p50 ratio, when it just crossed the threshold


NOTHING = Verdict()


class LatencyBook:
    """Every fingerprint's timings, shared by all sessions of one proxy."""

    def __init__(self, settings: SlowQuerySettings) -> None:
        self.settings = settings
        self.entries: OrderedDict[str, FingerprintLatency] = OrderedDict()
        self.evicted = 0  # fingerprints dropped to keep memory bounded
        self.truth_all = LatencyHistogram()  # every fingerprint together, for metrics
        self.target_all = LatencyHistogram()

    def record(
        self, fingerprint: str, statement: str, truth: float, target: float, now: float
    ) -> Verdict:
        """Both backends' time for one execution of ``fingerprint``, in seconds."""
        entries = self.entries
        entry = entries.get(fingerprint)
        if entry is None:
            entry = entries[fingerprint] = FingerprintLatency(fingerprint, statement)
            if len(entries) > self.settings.max_fingerprints:
                entries.popitem(last=False)
                self.evicted += 1
        else:
            entries.move_to_end(fingerprint)
        record_pair(entry.truth, entry.target, self.truth_all, self.target_all, truth, target)
        entry.executions += 1
        settings = self.settings
        if not settings.enabled:
            return NOTHING
        # settings.slower(truth, target), inlined: this runs for every statement.
        slow = target >= truth * settings.ratio and target - truth >= settings.min_seconds
        if not slow and (
            entry.executions < settings.min_samples
            or (entry.executions - settings.min_samples) % 16
        ):
            return NOTHING  # the common case: not slow, no regression check due
        suppressed = 0
        if slow:
            if entry.last_slow is not None and now - entry.last_slow < settings.interval:
                entry.suppressed += 1
                slow = False
            else:
                entry.last_slow = now
                suppressed, entry.suppressed = entry.suppressed, 0
        regression = self._regression(entry)
        if not slow and regression is None:
            return NOTHING
        return Verdict(slow=slow, suppressed=suppressed, regression=regression)

    def _regression(self, entry: FingerprintLatency) -> float | None:
        """The p50 ratio when it just crossed the threshold. Judged at the sample minimum
        and every 16 executions after it; re-armed once the ratio falls back below
        80 % of the threshold, so a fingerprint hovering at the line writes one event."""
        settings = self.settings
        count = entry.executions
        if count < settings.min_samples or (count - settings.min_samples) % 16:
            return None
        truth, target = entry.truth.quantile(0.5), entry.target.quantile(0.5)
        if truth is None or target is None:
            return None
        ratio = target / truth if truth > 0 else math.inf
        if not entry.regressed and settings.slower(truth, target):
            entry.regressed = True
            return ratio
        if entry.regressed and ratio < settings.ratio * 0.8:
            entry.regressed = False
        return None

    def get(self, fingerprint: str) -> FingerprintLatency | None:
        return self.entries.get(fingerprint)

    def snapshot(self) -> list[dict]:
        return [entry.snapshot() for entry in self.entries.values()]

    def reset(self) -> None:
        """Forget every timing (the admin console and the manhole can call this)."""
        self.entries.clear()
        self.truth_all = LatencyHistogram()
        self.target_all = LatencyHistogram()

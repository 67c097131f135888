"""What all sessions share when comparing: settings, the parse cache, the event sink,
the tables tainted by diverging writes, and the counters that keep outcomes apart."""

from __future__ import annotations

import json
import re
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twinkly.compare.values import NormalizationRules
from twinkly.perf.latency import LatencyBook, SlowQuerySettings
from twinkly.perf.slow import SlowQueryReporter
from twinkly.report.events import MISMATCH_KINDS, make_event
from twinkly.report.sink import IEventSink
from twinkly.sql.analysis import StatementCache

if TYPE_CHECKING:
    from twinkly.compare.volatile import VolatileColumns

# Every compared statement ends in exactly one of these, so metrics never lie:
# an ignored mismatch is not a match, and dropped work is counted.
RECENT_EVENTS = 1000  # kept in memory for the status pages and the admin console
RECENT_PLAN_BYTES = 32 * 1024  # larger plans are left out of the in-memory copy
MAX_FINGERPRINTS = 10_000  # mismatching fingerprints counted one by one

OUTCOMES = (
    "matched",  # equal (possibly after type-aware normalisation)
    "mismatched",  # a real difference: an event was written
    "one_sided_error",  # failed on one backend only: an error_divergence event
    "noise",  # different, explained by volatile functions or server identity
    "nondeterministic",  # different, and the SQL does not fix the answer
    "excluded",  # matched an exclude pattern: run on both, not compared
    "sampled_out",  # left out by comparison.sample-rate
    "skipped",  # not comparable: the target lost the transaction, or one side only
    "dropped",  # pairing was abandoned (caps, lost streams)
    "not_compared",  # no target to compare with (unavailable), or cut short by a cancel
)


@dataclass(frozen=True)
class ComparisonSettings:
    enabled: bool = True
    fail_on_differences: bool = False
    log_differences_only: bool = False
    exclude_patterns: tuple[re.Pattern[str], ...] = ()
    rules: NormalizationRules = field(default_factory=NormalizationRules)
    max_sample_rows: int = 20
    max_compared_rows: int = 10_000  # rows kept per result for a value-level diff
    sample_rate: float = 1.0
    hold_bytes: int = 8 * 1024 * 1024
    log_errors: bool = False
    redact: bool = False
    slow: SlowQuerySettings = field(default_factory=SlowQuerySettings)
    fail_on_slow_queries: bool = False
    # Whether statements are timed at all: asked for every statement, so kept as a field.
    timing: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timing", self.slow.enabled or self.fail_on_slow_queries)

    def excluded(self, sql: str) -> bool:
        return any(p.search(sql) for p in self.exclude_patterns)


class Monitor:
    """Shared by every session of one proxy."""

    def __init__(
        self,
        settings: ComparisonSettings,
        sink: IEventSink,
        labels: tuple[str, str],
        cache: StatementCache | None = None,
        clock: Callable[[], float] = time.time,
        slow: SlowQueryReporter | None = None,
        volatile: VolatileColumns | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.truth_label, self.target_label = labels
        self.cache = cache or StatementCache()
        self.outcomes: Counter[str] = Counter({o: 0 for o in OUTCOMES})
        self.events: Counter[str] = Counter()
        self.tainted: dict[str, str] = {}  # table -> id of the first diverging write
        self.latency = LatencyBook(settings.slow)
        # Writes slow_query events: with an Explainer and insight providers in the
        # service (app.wiring), without plans otherwise.
        self.slow = slow or SlowQueryReporter(self.emit, clock, None)
        # Columns each server generated itself (twinkly.compare.volatile): with a catalog
        # reader in the service unless comparison.volatile-columns = off; none otherwise.
        self.volatile = volatile
        self.muted: set[str] = set()  # fingerprints whose events are not written
        self.recent: deque[dict] = deque(maxlen=RECENT_EVENTS)  # for the status pages
        # Per fingerprint: mismatch events, and the statement (for the status pages).
        self.mismatches: Counter[str] = Counter()
        self.statements: dict[str, str] = {}

    def emit(self, event: dict) -> bool:
        """Write one event, unless its fingerprint is muted; False if it was not."""
        kind = event["kind"]
        if event.get("fingerprint") in self.muted:
            self.events["muted"] += 1  # counted, not written
            return False
        self.events[kind] += 1
        fingerprint = event.get("fingerprint")
        counted = fingerprint in self.mismatches or len(self.mismatches) < MAX_FINGERPRINTS
        if kind in MISMATCH_KINDS and fingerprint is not None and counted:
            self.mismatches[fingerprint] += 1
            self.statements.setdefault(fingerprint, event.get("statement") or "")
        self.recent.append(_kept_in_memory(event))
        self.sink.emit(event)
        return True

    def top_mismatches(self, n: int = 3) -> list[tuple[str, int, str]]:
        """(fingerprint, count, statement) of the most mismatching fingerprints."""
        return [(f, c, self.statements.get(f, "")) for f, c in self.mismatches.most_common(n)]

    def _emit_plain(
        self,
        kind: str,
        now: float,
        session: int | None,
        reason: str | None,
        statement: str | None = None,
        **fields: object,
    ) -> None:
        """An event about no particular result: no fingerprint, no answers."""
        event = make_event(
            kind,
            now=now,
            session=session,
            statement=statement,
            fingerprint=None,
            truth=None,
            target=None,
            reason=reason,
            **fields,  # type: ignore[arg-type]
        )
        self.emit(event)

    def backend_unavailable(self, reason: str, now: float, session: int | None = None) -> None:
        """A backend could not be reached, or was lost: that is an event too."""
        self._emit_plain("backend_unavailable", now, session, reason)

    def backend_event(self, kind: str, fields: dict, now: float) -> None:
        """``backend_unavailable`` / ``backend_recovered`` from the target's breaker."""
        fields = dict(fields)
        session = fields.pop("session", None)
        reason = fields.pop("reason", None)
        self._emit_plain(kind, now, session, reason, **fields)

    def statement_cut_short(
        self, sql: str | None, reason: str, now: float, session: int | None
    ) -> None:
        """A statement a cancel of Twinkly's cut short: not compared, and why."""
        self.count("not_compared")
        if sql is not None and (self.settings.redact or len(sql) > 2000):
            sql = None if self.settings.redact else sql[:2000]
        self._emit_plain("statement_cut_short", now, session, reason, statement=sql)

    def count(self, outcome: str, n: int = 1) -> None:
        self.outcomes[outcome] += n

    def taint(self, tables: frozenset[str], event_id: str) -> None:
        for table in tables:
            self.tainted.setdefault(table, event_id)

    def cause_of(self, tables: frozenset[str]) -> str | None:
        """The first diverging write to any of ``tables``, if one is known."""
        causes = [self.tainted[t] for t in tables if t in self.tainted]
        return min(causes) if causes else None  # ids sort by time: the earliest


def _kept_in_memory(event: dict) -> dict:
    """The event as the status pages keep it: plans larger than RECENT_PLAN_BYTES stay
    in the events file only, so the ring of recent events is bounded in bytes too."""
    plans = event.get("plans")
    if not plans:
        return event
    size = len(json.dumps(plans, default=str))
    if size <= RECENT_PLAN_BYTES:
        return event
    omitted = f"{size} bytes of plans: see event {event['id']} in the events file"
    return {**event, "plans": {"truth": None, "target": None}, "plans_omitted": omitted}

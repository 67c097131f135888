"""The matched lane: a session's plainly equal answers, settled without the comparator.

Nearly every pair a proxy sees is two byte-identical answers: no error, the same
columns, command tag, row count and digest. The comparator's general path spends a
dozen calls on each (judging, fingerprinting, the latency book, the volatile history);
at thousands of statements a second that is a large share of the proxy's CPU. The lane
sits in front of one session's ``Comparator`` as its pairer's observer. It settles a
pair itself only when the comparator would do nothing else than count it matched and
add both timings to an already-known fingerprint's histograms, with no slow verdict and
no regression check due; it hands everything else, unchanged, to the comparator. Every
decision is taken before anything is changed, so a pair is either settled here exactly
as the comparator would settle it, or not touched.

Two implementations of one ``MatchedLane(comparator)``: this reference and the C one in
``_lane.c`` (built with the other C accelerators; it settles the C tracker's results and
passes any other object on). ``TWINKLY_PURE_PYTHON=1`` selects this one, as it does for
the tracker; ``PYTHON`` and ``C`` (None when not built) hold each, for tests.
"""

from __future__ import annotations

from zope.interface import implementer

from twinkly.compare.comparator import Comparator, column_problems
from twinkly.compare.volatile import teaches
from twinkly.interfaces import IPairObserver
from twinkly.perf.timing import TIMED
from twinkly.sql import fingerprints as _fingerprints
from twinkly.tracking import responses
from twinkly.tracking.contexts import INTERNAL
from twinkly.wire.accel import record_pair, statement_shape

__all__ = ["IMPLEMENTATION", "PYTHON", "C", "MatchedLane"]

_cache = _fingerprints._cache  # the fingerprint cache, shared with fingerprints()
_CACHED_TEXT = _fingerprints.CACHED_TEXT


@implementer(IPairObserver)
class PythonMatchedLane:
    """The reference implementation (see the module docstring)."""

    def __init__(self, comparator: Comparator) -> None:
        self.comparator = comparator
        self.settled = 0  # pairs settled here, not by the comparator
        self._monitor = comparator.monitor
        self._status = "I"  # the last sync point's status, as the comparator last saw it
        self._quiet = True
        self._refresh()

    def _refresh(self) -> None:
        """Settle nothing while the comparator keeps state across pairs: a transaction
        the target lost, or an enforcer waiting for verdicts."""
        comparator = self.comparator
        self._quiet = comparator._verdicts is None and comparator._target_lost_transaction is None

    # --- IPairObserver --------------------------------------------------------------

    def statements_paired(self, truth: object, target: object) -> None:
        if not self._settle(truth, target):
            self.comparator.statements_paired(truth, target)  # type: ignore[arg-type]

    def sync_paired(self, truth: object, target: object) -> None:
        status = truth.status  # type: ignore[attr-defined]
        if self._quiet and status == self._status and target.status == status:  # type: ignore[attr-defined]
            self.settled += 1
            return  # the comparator would change nothing
        self.comparator.sync_paired(truth, target)  # type: ignore[arg-type]
        self._status = status
        self._refresh()

    def statement_unpaired(self, result: object, side: str) -> None:
        self.comparator.statement_unpaired(result, side)  # type: ignore[arg-type]

    def truth_sync_alone(self, truth: object) -> None:
        self.comparator.truth_sync_alone(truth)  # type: ignore[arg-type]

    def pairing_abandoned(self, reason: str) -> None:
        self.comparator.pairing_abandoned(reason)

    # --- settling -------------------------------------------------------------------

    def _settle(self, truth, target) -> bool:  # type: ignore[no-untyped-def]
        """Settle the pair as the comparator would, or return False having changed
        nothing."""
        if truth.context is INTERNAL:
            return True  # Twinkly's own statement: the comparator ignores it too
        if not self._quiet or truth.error is not None or target.error is not None:
            return False
        monitor = self._monitor
        settings = monitor.settings
        if settings.exclude_patterns or settings.sample_rate < 1.0:
            return False
        columns, tag = truth.columns, truth.tag
        # Column bytes that differ in table OIDs alone (per server) are equal columns.
        if (
            columns != target.columns
            and not truth.columns_described
            and column_problems(columns, target.columns)
        ):
            return False
        if columns is None and tag != target.tag:
            return False
        if truth.rows != target.rows or truth.digest != target.digest:
            return False
        if monitor.volatile is not None and teaches(tag):
            return False
        timing = None
        if truth.request in TIMED and settings.timing and truth.timed and target.timed:
            timing = self._timing(truth, target)
            if timing is False:
                return False
        # Decided: from here on, what the comparator would have done.
        self.comparator._truth_last_tag = tag
        monitor.outcomes["matched"] += 1
        if timing is not None and timing is not True:
            book, fingerprint, entry, truth_seconds, target_seconds = timing
            book.entries.move_to_end(fingerprint)
            record_pair(
                entry.truth, entry.target, book.truth_all, book.target_all,
                truth_seconds, target_seconds,
            )  # fmt: skip
            entry.executions += 1
        self.settled += 1
        return True

    def _timing(self, truth, target):  # type: ignore[no-untyped-def]
        """What timing the pair takes: True (nothing: no single fingerprint), False (the
        comparator's path: a text not yet fingerprinted, a new fingerprint, a slow
        execution or a regression check due), or what to record."""
        context = truth.context
        if context is None:
            return True
        sql = context[0]
        if len(sql) > _CACHED_TEXT:
            return False
        prints = _cache.get(sql)
        if prints is None:
            prints = _cache.get(statement_shape(sql))
            if prints is None:
                return False
        if len(prints) != 1:
            return True
        fingerprint = prints[0]
        book = self._monitor.latency
        entry = book.entries.get(fingerprint)
        if entry is None:
            return False
        settings = book.settings
        truth_seconds, target_seconds = truth.elapsed, target.elapsed
        if settings.enabled:
            if (
                target_seconds >= truth_seconds * settings.ratio
                and target_seconds - truth_seconds >= settings.min_seconds
            ):
                return False
            executions = entry.executions + 1
            if executions >= settings.min_samples and (executions - settings.min_samples) % 16 == 0:
                return False
        return book, fingerprint, entry, truth_seconds, target_seconds


PYTHON = PythonMatchedLane
C = None
if responses.C is not None:
    try:
        from twinkly.compare import _lane  # type: ignore[attr-defined]
    except ImportError:  # the tracker was built but not the lane: the reference serves
        pass
    else:
        C = _lane.MatchedLane
        _lane.setup(
            INTERNAL, _cache, _CACHED_TEXT, statement_shape, record_pair, teaches,
            column_problems,
        )  # fmt: skip

# The C lane settles the C tracker's results: it runs where the C tracker does.
MatchedLane = C if C is not None and responses.IMPLEMENTATION == "c" else PYTHON
IMPLEMENTATION = "c" if MatchedLane is C else "python"

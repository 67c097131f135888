"""The comparison side as the proxy sees it: one comparator per session, over the
state all sessions share (``shared_state.Monitor``), behind the matched lane that
settles its plainly equal answers (``lane.MatchedLane``)."""

from __future__ import annotations

from collections.abc import Callable

from zope.interface import implementer

from twinkly.compare.comparator import Comparator
from twinkly.compare.lane import MatchedLane
from twinkly.compare.shared_state import Monitor
from twinkly.interfaces import IComparison, IPairObserver, ISessionFacts, IVerdictListener


@implementer(IComparison)
class SessionComparisons:
    """Given to the proxy factory when comparison is on."""

    def __init__(self, monitor: Monitor, clock: Callable[[], float]) -> None:
        self.monitor = monitor
        self._clock = clock

    @property
    def max_compared_rows(self) -> int:
        return self.monitor.settings.max_compared_rows

    def observer(self, facts: ISessionFacts, verdicts: IVerdictListener | None) -> IPairObserver:
        return MatchedLane(Comparator(self.monitor, facts, verdicts, self._clock))

    def analyze(self, sql: str) -> tuple:
        return self.monitor.cache.get(sql)

    def enforcement(self) -> tuple[bool, bool, int]:
        settings = self.monitor.settings
        return settings.fail_on_differences, settings.fail_on_slow_queries, settings.hold_bytes

    def backend_unavailable(self, reason: str, when: float, session_id: int | None) -> None:
        self.monitor.backend_unavailable(reason, when, session_id)

    def backend_event(self, kind: str, fields: dict, when: float) -> None:
        self.monitor.backend_event(kind, fields, when)

    def not_compared(self, statements: int) -> None:
        self.monitor.count("not_compared", statements)

    def statement_cut_short(
        self, sql: str | None, reason: str, when: float, session_id: int | None
    ) -> None:
        self.monitor.statement_cut_short(sql, reason, when, session_id)

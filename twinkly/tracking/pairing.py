"""Pairing the two backends' results, statement by statement and sync point by sync point.

Both backends receive the same messages in the same order, and every result carries the
key of the client message (and statement) it answers. Each side's items arrive in key
order, so the pairer merges the two streams: equal keys pair; an item whose key the
other side has already passed has no partner (that backend skipped it, after an error,
or ignored a Sync during COPY) and is reported as one-sided. No timer is involved.

Two implementations of one ``Pairer``: the reference ``PythonPairer``, and ``CPairer``,
which does the two steps nearly every item takes (pair at once with the other side's
oldest, or wait while the other side has nothing) in C (``PairerCore`` in
``_tracker.c``'s extension) and leaves the rest to the reference. ``Pairer`` is the one
that runs with the C tracker; ``PYTHON`` and ``C`` (None when not built) hold each.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from zope.interface import implementer

from twinkly.interfaces import IPairObserver
from twinkly.tracking import responses
from twinkly.tracking.responses import Item, StatementResult, SyncPoint

# Either tracker's sync points (tests feed one pairer both kinds).
_SYNC_POINTS = frozenset(
    impl.SyncPoint for impl in (responses.PYTHON, responses.C) if impl is not None
)


@implementer(IPairObserver)
class PairCounter:
    """The simplest observer: counts what was paired. Used when comparison is off."""

    def __init__(self) -> None:
        self.paired = 0
        self.unpaired = {"truth": 0, "target": 0}
        self.syncs = 0
        self.abandoned: str | None = None

    def statements_paired(self, truth: StatementResult, target: StatementResult) -> None:
        self.paired += 1

    def statement_unpaired(self, result: StatementResult, side: str) -> None:
        self.unpaired[side] += 1

    def sync_paired(self, truth: SyncPoint, target: SyncPoint) -> None:
        self.syncs += 1

    def truth_sync_alone(self, truth: SyncPoint) -> None:
        pass

    def pairing_abandoned(self, reason: str) -> None:
        self.abandoned = reason


class PythonPairer:
    """Holds each side's finished items until the other side's counterpart arrives.

    ``max_held`` bounds memory: when one side gets that far ahead, pairing for the
    session is abandoned (reported once) and later items are dropped, while the
    session itself goes on serving the client.
    """

    def __init__(self, observer: IPairObserver, max_held: int = 10000) -> None:
        self._observer = observer
        self._max_held = max_held
        self._truth: deque[Item] = deque()
        self._target: deque[Item] = deque()
        self.abandoned: str | None = None
        self.dropped = 0
        self.unpaired_syncs = 0
        self.truth_done_end = 0  # truth stream offset up to which everything was paired

    @property
    def truth_ahead(self) -> int:
        """Truth items waiting for the target: how far the target lags."""
        return len(self._truth)

    @property
    def target_ahead(self) -> int:
        return len(self._target)

    def truth_head(self) -> Item | None:
        return self._truth[0] if self._truth else None

    def truth_pending(self) -> deque[Item]:
        """The truth's items still waiting for the target's, oldest first (read only)."""
        return self._truth

    def target_pending(self) -> deque[Item]:
        """The target's items still waiting for the truth's, oldest first (read only)."""
        return self._target

    def add_truth(self, item: Item) -> None:
        if self.abandoned is not None:
            self.dropped += 1
            return
        target = self._target
        if target and not self._truth and target[0].key == item.key:
            # The target answered first: pair at once (what _drain does, without a queue).
            partner = target.popleft()
            self.truth_done_end = item.end
            if type(item) in _SYNC_POINTS:
                self._observer.sync_paired(item, partner)  # type: ignore[arg-type]
            else:
                self._observer.statements_paired(item, partner)  # type: ignore[arg-type]
            return
        self._truth.append(item)
        if self._target:
            self._drain()
        elif len(self._truth) > self._max_held:
            self.abandon(f"the target fell more than {self._max_held} results behind")

    def add_target(self, item: Item) -> None:
        if self.abandoned is not None:
            self.dropped += 1
            return
        truth = self._truth
        if truth and not self._target and truth[0].key == item.key:
            # The common case: this answers the truth's oldest waiting item.
            partner = truth.popleft()
            self.truth_done_end = partner.end
            if type(partner) in _SYNC_POINTS:
                self._observer.sync_paired(partner, item)  # type: ignore[arg-type]
            else:
                self._observer.statements_paired(partner, item)  # type: ignore[arg-type]
            return
        self._target.append(item)
        if self._truth:
            self._drain()
        elif len(self._target) > self._max_held:
            self.abandon(f"the target ran more than {self._max_held} results ahead")

    def wrap_observer(self, wrap: Callable[[IPairObserver], IPairObserver]) -> None:
        """Put an observer in front of the current one (``observer`` stays the original)."""
        self._observer = wrap(self._observer)

    def abandon(self, reason: str) -> None:
        if self.abandoned is not None:
            return
        self.abandoned = reason
        self.dropped += len(self._truth) + len(self._target)
        self._truth.clear()
        self._target.clear()
        self._observer.pairing_abandoned(reason)

    def _drain(self) -> None:
        truth, target = self._truth, self._target
        while truth and target:
            a, b = truth[0], target[0]
            if a.key == b.key:
                truth.popleft()
                target.popleft()
                self._paired(a, b)
            elif a.key < b.key:
                truth.popleft()
                self.truth_done_end = a.end
                self._one_sided(a, "truth")
            else:
                target.popleft()
                self._one_sided(b, "target")

    def _paired(self, truth: Item, target: Item) -> None:
        self.truth_done_end = truth.end
        if type(truth) in _SYNC_POINTS:
            self._observer.sync_paired(truth, target)  # type: ignore[arg-type]
        else:
            self._observer.statements_paired(truth, target)  # type: ignore[arg-type]

    def _one_sided(self, item: Item, side: str) -> None:
        if type(item) in _SYNC_POINTS:
            self.unpaired_syncs += 1  # a Sync one backend ignored (during COPY)
            if side == "truth":
                self._observer.truth_sync_alone(item)
        else:
            self._observer.statement_unpaired(item, side)  # type: ignore[arg-type]


PYTHON = PythonPairer
C: type[PythonPairer] | None = None
if responses.C is not None:
    from twinkly.tracking.results import _tracker as _c_tracker

    class CPairer(_c_tracker.PairerCore, PythonPairer):  # type: ignore[misc, name-defined]
        """``add_truth`` and ``add_target`` in C for the C tracker's items; anything the C
        steps do not cover goes, untouched, to the reference's."""

        _reference_add_truth = PythonPairer.add_truth
        _reference_add_target = PythonPairer.add_target

    C = CPairer

if TYPE_CHECKING:
    Pairer = PythonPairer
else:
    Pairer = C if C is not None and responses.IMPLEMENTATION == "c" else PYTHON

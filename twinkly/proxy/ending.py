"""How a session ends while a backend still executes: cancel, then drain.

When the client leaves, or the truth's connection is lost, nobody will read what a
backend is still computing. Letting it run to its end (a 3M-row SELECT, a long UPDATE)
costs the servers seconds of work and holds locks; so each backend that still owes
answers gets a CancelRequest with the key Twinkly holds (as libpq would send it), then
its connection is drained: what the server sends before it reads the Terminate arrives
and is paired. Answers already complete on both sides are still compared; a statement
the cancel cut short is not: it is counted ``not_compared`` and reported as a
``statement_cut_short`` event with the reason, never as a difference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from twinkly.tracking.contexts import INTERNAL
from twinkly.wire.backend import ErrorResponse
from twinkly.wire.buffers import Reader

log = Logger()

QUERY_CANCELED = "57014"


class _Owed:
    """A statement that never got an answer, as far as a report needs it."""

    __slots__ = ("context",)

    def __init__(self, context: tuple) -> None:
        self.context = context


def _sqlstate(result: Any) -> str | None:
    if result.error is None:
        return None
    try:
        return ErrorResponse.read(Reader(result.error)).sqlstate
    except Exception:  # a garbled payload: treat as an error of its own
        return "?????"


class CutShortObserver:
    """Stands in front of the session's pair observer once its backends were cancelled:
    pairs that agree go on to it; anything the cancel may have caused does not."""

    def __init__(self, inner: Any, reason: str, report: Callable[[Any, str], None]) -> None:
        self.inner = inner
        self.reason = reason
        self._report = report  # (result, reason): one statement not compared
        self.cut_short = 0

    def __getattr__(self, name: str) -> Any:  # monitor, enforcer, session_id...
        return getattr(self.inner, name)

    def statements_paired(self, truth: Any, target: Any) -> None:
        a, b = _sqlstate(truth), _sqlstate(target)
        if (a is None and b is None) or (a == b and a != QUERY_CANCELED):
            self.inner.statements_paired(truth, target)
        else:
            self._cut(truth)

    def statement_unpaired(self, result: Any, side: str) -> None:
        self._cut(result)

    def sync_paired(self, truth: Any, target: Any) -> None:
        pass  # transaction states after a cancel say nothing about the target

    def truth_sync_alone(self, truth: Any) -> None:
        pass

    def pairing_abandoned(self, reason: str) -> None:
        self.inner.pairing_abandoned(reason)

    def _cut(self, result: Any) -> None:
        self.cut_short += 1
        self._report(result, self.reason)


def cancel_executing(session: Any, why: str, send: Callable[[Any], object]) -> list[Any]:
    """Send a CancelRequest to every connected backend of ``session`` that still owes
    answers; returns those backends. Later pairs go through a CutShortObserver."""
    cancelled = []
    for backend, tracker in (
        (session.truth, session.truth_tracker),
        (session.target, session.target_tracker),
    ):
        if backend is None or not tracker.owed or backend.key is None:
            continue
        transport = backend.transport
        if transport is None or not getattr(transport, "connected", True):
            continue
        send(backend)
        cancelled.append(backend)
    if cancelled and session.pairer.abandoned is None:
        reason = f"cancelled by Twinkly: {why}"
        pairer = session.pairer
        report = session.report_cut_short or (lambda result, reason: None)
        truth_gone = session.truth not in cancelled and session.truth_tracker.owed
        if truth_gone:
            # The truth's answers will never come: what the target owes is cut short now.
            for context in session.target_tracker.owed_contexts():
                if context is not INTERNAL:
                    report(_Owed(context), reason)
            pairer.abandon(reason)
        else:
            pairer.wrap_observer(lambda inner: CutShortObserver(inner, reason, report))
        log.info(
            "session {pid}: {why}; cancelled {count} backend statement(s) still running",
            pid=session.process_id,
            why=why,
            count=len(cancelled),
        )
    return cancelled

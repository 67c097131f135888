"""A reactor turn with no timer work to do, made cheap.

Twisted's main loop calls ``runUntilCurrent`` and ``timeout`` on every turn. Between
them they read the clock twice and call ``_insertNewDelayedCalls`` twice, ``min`` and
``max`` once: about ten calls, where a busy proxy turns several times per statement and
almost never has a timer due. ``quick_timers`` puts a fast path in front of each: when
no call from a thread, no new or due timed call and no shutdown is waiting, the turn
reads the clock once and takes the poll timeout from the earliest timed call (three
calls in all); otherwise Twisted's own methods run, unchanged.
"""

from __future__ import annotations

from twisted.internet.base import ReactorBase

_LONGEST = 2147483  # seconds: as ReactorBase.timeout, what epoll_wait's int of ms can hold
_NEEDED = (
    "_cancellations",
    "_justStopped",
    "_newTimedCalls",
    "_pendingTimedCalls",
    "threadCallQueue",
)


def quick_timers(reactor: object) -> bool:
    """Give ``reactor`` the fast path; False (and nothing changed) for a reactor that is
    not a ReactorBase with the attributes it reads, or one already changed."""
    if (
        not isinstance(reactor, ReactorBase)
        or getattr(reactor, "_twinkly_quick_timers", False)
        or not all(hasattr(reactor, name) for name in _NEEDED)
    ):
        return False
    run_until_current = reactor.runUntilCurrent
    full_timeout = reactor.timeout
    seconds = reactor.seconds
    quiet_at: list[float | None] = [None]  # when this turn found nothing to run

    def quick_run_until_current() -> None:
        pending = reactor._pendingTimedCalls
        now = seconds()
        if (
            reactor.threadCallQueue
            or reactor._newTimedCalls
            or reactor._justStopped
            or reactor._cancellations > 50
            or (pending and pending[0].time <= now)
        ):
            quiet_at[0] = None
            run_until_current()
        else:
            quiet_at[0] = now

    def quick_timeout() -> float | None:
        now, quiet_at[0] = quiet_at[0], None  # only right after a quiet turn's check
        if now is None or reactor._newTimedCalls or reactor.threadCallQueue:
            return full_timeout()
        pending = reactor._pendingTimedCalls
        if not pending:
            return None
        delay = pending[0].time - now  # > 0: nothing was due at ``now``
        return delay if delay < _LONGEST else _LONGEST

    reactor.runUntilCurrent = quick_run_until_current  # type: ignore[method-assign]
    reactor.timeout = quick_timeout  # type: ignore[method-assign]
    reactor._twinkly_quick_timers = True  # type: ignore[attr-defined]
    return True

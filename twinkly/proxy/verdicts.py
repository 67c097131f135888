"""The comparator's verdicts, queued until the tracker that produced them returns.

A ReadyForQuery framed inside ``ResponseTracker.receive`` reaches the comparator through
the pairer; acting on the verdict there (releasing held bytes, sending Twinkly's own
COMMIT) would write to the backends from inside the loop that is still framing their
answers. The session applies the queue once ``receive`` has returned, in order (the
"receive data, get events" pattern of sans-IO protocol libraries).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from twinkly.interfaces import IVerdictListener


@implementer(IVerdictListener)
class VerdictQueue:
    """Collects verdicts for one session's enforcer; ``apply`` hands them over."""

    def __init__(self, enforcer: Any) -> None:
        self._enforcer = enforcer
        self._queued: list[tuple[Callable[..., None], tuple]] = []

    @property
    def holding(self) -> bool:
        return bool(self._enforcer.holding)

    def mismatch(self, event: dict) -> None:
        self._queued.append((self._enforcer.mismatch, (event,)))

    def slow(self, written: Any, provisional: dict) -> None:
        self._queued.append((self._enforcer.slow, (written, provisional)))

    def synced(self, point: Any) -> None:
        self._queued.append((self._enforcer.truth_synced, (point,)))

    def __bool__(self) -> bool:
        return bool(self._queued)

    def apply(self) -> None:
        """Hand every queued verdict to the enforcer, oldest first (one may queue more)."""
        queued = self._queued
        while queued:
            handler, args = queued.pop(0)
            handler(*args)

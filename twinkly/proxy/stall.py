"""A target that keeps the client waiting too long is let go.

The client waits for the target when the target lags too far behind the truth
(``LagControl``) or stops reading its socket. Usually that is a slow target catching
up. But the target may itself be waiting, on a row lock held by another session whose
own progress waits on this session's truth: a lock cycle that spans the two databases,
which neither server's deadlock detector can see, so nothing would ever break it. A
client kept waiting on the target for ``proxy.target-stall-timeout`` without a break
has its target dropped instead: the session goes on with the source of truth alone,
as when the target's connection is lost, and the drop is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from twinkly.proxy.transports import stream_of

log = Logger()

# Why a gate of the session holds the client (or the truth, and so the client) back
# because of the target: the target's socket is full, it lags by results, or by bytes.
TARGET_WAITS = frozenset({"target-buffer", "target-lag", "target-lag-bytes"})


class StallWatch:
    """Times how long the target has kept the client waiting without a break."""

    def __init__(
        self, clock: IReactorTime, timeout: float, on_stall: Callable[[float], None]
    ) -> None:
        self._clock = clock
        self.timeout = timeout  # 0: never drop the target for waiting
        self._on_stall = on_stall
        self._waiting: set[str] = set()
        self._call: IDelayedCall | None = None

    def changed(self, reason: str, held: bool) -> None:
        """A gate of the session began (``held``) or stopped holding for ``reason``."""
        if reason not in TARGET_WAITS:
            return
        if held:
            self._waiting.add(reason)
            if self._call is None and self.timeout > 0:
                self._call = self._clock.callLater(self.timeout, self._expired)
            return
        self._waiting.discard(reason)
        if not self._waiting:
            self.stop()

    @property
    def waiting(self) -> bool:
        return bool(self._waiting)

    def stop(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _expired(self) -> None:
        self._call = None
        if self._waiting:
            self._on_stall(self.timeout)


def drop_stalled_target(session: Any, target: Any, waited: float, comparison: Any) -> str:
    """Report the stall, cancel what the target still runs (a statement waiting on a
    lock ends at once) and close the session's target connection; returns why."""
    why = (
        f"the target {target.config.describe()} kept the client waiting {waited:g} s"
        " (lagging, or not reading: perhaps a lock wait that depends on another session,"
        " a cycle across the two databases); dropped for this session, which goes on"
        " with the source of truth alone: its later writes are not on the target"
    )
    log.warn("session {pid}: {why}", pid=session.session_id, why=why)
    if comparison is not None:
        fields = {"session": session.session_id, "reason": why, "waited_s": waited}
        comparison.backend_event("target_stalled", fields, session.clock.seconds())
    if session.target_tracker.owed and target.key is not None:
        session.send_cancel(target)
    stream_of(target).abortConnection()
    return why

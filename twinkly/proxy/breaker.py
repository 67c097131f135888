"""A circuit breaker for the target: sessions keep going on the truth while it is down.

Without it every new session would try the target again, and a blackholed target (no
answer at all) would cost each of them the whole connect timeout. The breaker keeps one
state for the proxy:

- ``up``: every session connects the target.
- ``down``: nobody tries until ``retry_at``; sessions run on the truth alone.
- ``probing``: the retry time passed and one session is trying; the others do not wait
  for it. Its success closes the breaker, its failure doubles the backoff (up to the
  maximum).

Events: ``backend_unavailable`` once per outage (not per session) and
``backend_recovered`` when a connect succeeds again, with how long it lasted and how many
sessions ran without the target meanwhile. A session losing its target connection (a
backend terminated, a server stopping) is announced the same way, once, without closing
the breaker: the next connect says whether it is an outage.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

UP, DOWN, PROBING = "up", "down", "probing"


class TargetBreaker:
    """Decides whether a new session connects the target; counts what it cost."""

    def __init__(
        self,
        clock: IReactorTime,
        initial_backoff: float = 1.0,
        max_backoff: float = 30.0,
        announce: Callable[[str, dict], None] | None = None,
    ) -> None:
        self.clock = clock
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        # announce(kind, fields): "backend_unavailable" or "backend_recovered".
        self.announce = announce
        self.state = UP
        self.backoff = initial_backoff
        self.retry_at = 0.0
        self.reason: str | None = None  # why the target is (or was last) unavailable
        self.outage_started: float | None = None  # set while an outage is announced
        self.outages = 0
        self.sessions_not_compared = 0  # sessions that started without the target
        self._outage_sessions = 0
        self.attempts = 0
        self.failures = 0

    # --- questions ------------------------------------------------------------------

    def allow(self) -> bool:
        """May a new session connect the target now? True makes it the probe when the
        breaker is down and the retry time has come."""
        if self.state == UP:
            return True
        if self.state == DOWN and self.clock.seconds() >= self.retry_at:
            self.state = PROBING
            return True
        return False

    @property
    def available(self) -> bool:
        return self.state == UP and self.outage_started is None

    def describe(self) -> dict:
        """The target's state, for /readyz and the status pages."""
        info: dict = {"state": self.state, "outages": self.outages}
        info["sessions_not_compared"] = self.sessions_not_compared
        if self.reason is not None and not self.available:
            info["reason"] = self.reason
        if self.state != UP:
            info["retry_in_s"] = round(max(0.0, self.retry_at - self.clock.seconds()), 3)
        return info

    # --- what happened ----------------------------------------------------------------

    def succeeded(self) -> None:
        """A connect to the target worked."""
        self.attempts += 1
        was_out = self.outage_started is not None
        self.state = UP
        self.backoff = self.initial_backoff
        if was_out:
            assert self.outage_started is not None
            lasted = self.clock.seconds() - self.outage_started
            fields = {
                "reason": f"the target is reachable again after {lasted:.1f}s",
                "outage_s": round(lasted, 3),
                "sessions_not_compared": self._outage_sessions,
            }
            self.outage_started = None
            self._outage_sessions = 0
            log.info("target reachable again after {lasted:.1f}s", lasted=lasted)
            self._announce("backend_recovered", fields)

    def failed(self, reason: str) -> None:
        """A connect to the target failed (unreachable, not a refusal)."""
        self.attempts += 1
        self.failures += 1
        if self.state == PROBING:
            self.backoff = min(self.backoff * 2, self.max_backoff)
        elif self.state == UP:
            self.backoff = self.initial_backoff
        self.state = DOWN
        self.retry_at = self.clock.seconds() + self.backoff
        self.reason = reason
        self._outage(reason)

    def lost(self, reason: str, session: int | None = None) -> None:
        """A session's target connection went away: announced once, breaker unchanged."""
        self.reason = reason
        self._outage(reason, session)

    def session_without_target(self) -> None:
        self.sessions_not_compared += 1
        self._outage_sessions += 1

    def _outage(self, reason: str, session: int | None = None) -> None:
        if self.outage_started is not None:
            return  # already announced: once per outage
        self.outage_started = self.clock.seconds()
        self.outages += 1
        log.warn(
            "target unavailable: {reason}; sessions go on with the source of truth alone"
            " (next try in {backoff}s)",
            reason=reason,
            backoff=self.backoff,
        )
        fields: dict = {"reason": reason}
        if session is not None:
            fields["session"] = session
        self._announce("backend_unavailable", fields)

    def _announce(self, kind: str, fields: dict) -> None:
        if self.announce is not None:
            self.announce(kind, fields)

"""Connection limits, as pgbouncer has them: how many clients, how many still logging in,
and how long a login may take.

``ConnectionLimits`` is shared by the factory's connections; each ``ClientProtocol`` asks
``admit`` in ``connectionMade`` and tells ``logged_in`` / ``gone`` as it goes. The login
timer runs on the injected reactor clock (``callLater``), so tests drive it with a
``MemoryReactorClock``.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

TOO_MANY = "53300"  # too_many_connections


class Admission:
    """One connection's place in the limits: its login timer and whether it counts as
    logging in."""

    __slots__ = ("_limits", "_timer", "counted", "logging_in")

    def __init__(self, limits: ConnectionLimits) -> None:
        self._limits = limits
        self._timer: IDelayedCall | None = None
        self.logging_in = True
        self.counted = True

    def logged_in(self) -> None:
        """Start-up and authentication are done: the timer stops, the slot frees."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.logging_in:
            self.logging_in = False
            self._limits.starting -= 1

    def gone(self) -> None:
        """The connection closed (idempotent)."""
        self.logged_in()
        if self.counted:
            self.counted = False
            self._limits.clients -= 1


class ConnectionLimits:
    """Counts clients; ``admit`` returns an Admission or the reason for a refusal."""

    def __init__(
        self,
        clock: IReactorTime,
        settings: Callable[[], tuple[float, int, int]],
    ) -> None:
        self.clock = clock
        # (client_login_timeout, max_client_connections, max_startup_connections), read
        # per connection so that a reload applies to new clients.
        self.settings = settings
        self.clients = 0
        self.starting = 0
        self.refused = 0
        self.login_timeouts = 0

    def admit(self, on_timeout: Callable[[], None]) -> Admission | str:
        timeout, max_clients, max_starting = self.settings()
        if self.clients >= max_clients:
            self.refused += 1
            return f"sorry, too many clients already (max-client-connections = {max_clients})"
        if self.starting >= max_starting:
            self.refused += 1
            return (
                "sorry, too many clients logging in at once"
                f" (max-startup-connections = {max_starting})"
            )
        self.clients += 1
        self.starting += 1
        admission = Admission(self)

        def expired() -> None:
            admission._timer = None
            self.login_timeouts += 1
            on_timeout()

        admission._timer = self.clock.callLater(timeout, expired)
        return admission

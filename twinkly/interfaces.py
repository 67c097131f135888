"""The contracts between Twinkly's layers.

Data flows one way: client -> session -> two backends -> trackers -> pairer ->
comparator -> events. A lower layer never imports a higher one; where a lower part must
call up (the pairer tells the comparator, the comparator tells the enforcer, a session
asks the comparison side for an observer), it calls one of these interfaces, and the
application wiring (``twinkly.app``) passes the implementation in a constructor.
Every implementation is checked with ``verifyObject`` in the unit tests.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IPairObserver(Interface):
    """Receives what the pairer matched; the comparator implements this."""

    def statements_paired(truth, target) -> None:  # type: ignore[no-untyped-def]
        """Both backends answered the same request (two ``StatementResult``)."""

    def statement_unpaired(result, side: str) -> None:  # type: ignore[no-untyped-def]
        """Only ``side`` ("truth" or "target") answered: the other skipped it after an error."""

    def sync_paired(truth, target) -> None:  # type: ignore[no-untyped-def]
        """Both backends reached the same ReadyForQuery (two ``SyncPoint``)."""

    def truth_sync_alone(truth) -> None:  # type: ignore[no-untyped-def]
        """The truth reached a ReadyForQuery the target never sends (a Sync it ignored
        during COPY): what waits for the truth's sync points must still see it."""

    def pairing_abandoned(reason: str) -> None:
        """The session stopped pairing (a cap was reached or a stream was lost)."""


class IVerdictListener(Interface):
    """What the comparator tells the session's enforcer (comparison.fail-on-differences).

    The comparator runs inside a tracker's ``receive``; a listener that acts on these
    (releasing bytes, sending statements) must queue them and act once ``receive`` has
    returned, so that no fan-out happens inside the loop that framed the answer."""

    holding = Attribute("Whether the truth's answer of the open group is being held")

    def mismatch(event: dict) -> None:
        """A real difference in the open group (its event)."""

    def slow(written, provisional: dict) -> None:  # type: ignore[no-untyped-def]
        """A statement of the open group was too slow on the target; ``written`` is a
        Deferred firing with its event once both plans are in."""

    def synced(point) -> None:  # type: ignore[no-untyped-def]
        """The truth's ReadyForQuery (a ``SyncPoint``), once both results up to it are judged."""


class ISessionFacts(Interface):
    """What the comparator may know of its session."""

    session_id = Attribute("Twinkly's own process id of the session (its cancel key)")

    def truth_settings() -> dict:
        """The truth session's reported settings now (TimeZone, DateStyle...)."""

    def side_connections() -> tuple | None:
        """How to log in to both backends as this session did (for EXPLAIN), or None."""


class ISessionOperations(Interface):
    """What the policies of one session (enforcer, COPY-in alignment, routing) may do
    with it; they never reach into the session otherwise."""

    statements = Attribute("Client messages that owed an answer so far (the last sequence number)")
    target_connected = Attribute("Whether the session still has its target backend")
    truth_tracker = Attribute("The truth's ResponseTracker (read only)")
    target_tracker = Attribute("The target's ResponseTracker (read only)")

    def next_sequence() -> int:
        """Number the next message that owes an answer."""

    def forward(messages: list) -> None:
        """Send whole client messages ``[(type_byte, payload)]`` on to both backends."""

    def deliver(data: bytes) -> None:
        """Bytes for the client."""

    def internal_query(sql: str) -> int:
        """Run a statement of Twinkly's own on both backends (the client never sees its
        answer); returns the sequence number its results carry."""

    def send_to_truth(data: bytes) -> None:
        """Bytes for the truth backend only."""

    def send_to_target(data: bytes) -> None:
        """Bytes for the target backend only."""

    def pause_client(reason: str) -> None:
        """Stop reading the client for ``reason`` (reasons are counted, not nested)."""

    def resume_client(reason: str) -> None:
        """Withdraw ``reason``; the client is read again once no reason is left."""


class IComparison(Interface):
    """The comparison side as the proxy sees it: given to the factory when comparing."""

    max_compared_rows = Attribute("Rows a tracker keeps per result for a diff")

    def observer(facts: ISessionFacts, verdicts: IVerdictListener | None) -> IPairObserver:
        """A new session's comparator."""

    def analyze(sql: str) -> tuple:
        """The statements of a SQL text (``StatementInfo``), cached."""

    def enforcement() -> tuple:
        """``(fail_on_differences, fail_on_slow_queries, hold_bytes)`` for a new session."""

    def backend_unavailable(reason: str, when: float, session_id: int | None) -> None:
        """A backend could not be reached or was lost (an event, once per outage)."""

    def backend_event(kind: str, fields: dict, when: float) -> None:
        """``backend_unavailable`` / ``backend_recovered`` from the target's breaker."""

    def not_compared(statements: int) -> None:
        """Statements served by the truth alone (no target): counted, not compared."""

    def statement_cut_short(
        sql: str | None, reason: str, when: float, session_id: int | None
    ) -> None:
        """A statement Twinkly cancelled when its session ended: not compared."""


class IAdminConsoles(Interface):
    """Twinkly's own console on a virtual database, for its admin users."""

    def allowed(user: str) -> bool:
        """Whether ``user`` may open the console."""

    def open() -> object:
        """A console for one connection: ``handle(type_byte, payload) -> (reply, close)``."""

    def greeting() -> bytes:
        """What a console connection gets after authentication (parameters, ReadyForQuery)."""


class ISessionTracer(Interface):
    """The protocol trace as sessions see it (debug.log-protocol)."""

    def recording() -> bool:
        """Whether start-ups are recorded (a trace may attach once the session has an id)."""

    def start(session, application: str, started: dict) -> None:  # type: ignore[no-untyped-def]
        """A session began: attach the trace to it if it is wanted, with the start-up
        bytes of its three legs."""

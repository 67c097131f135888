"""comparison.fail-on-differences: the client sees no answer the target contradicts
(and comparison.fail-on-slow-queries: none the target was too slow to give).

The truth's bytes are held per sync group (a simple Query, or everything up to a Sync)
until both backends' results are judged. Equal: the held bytes go to the client. Different:
the client gets ErrorResponse TW001 (result mismatch) or TW002 (one-sided error), and both
databases are brought to the state the client is told about, by statements of Twinkly's
own whose answers the client never sees:

- an autocommit group that writes is wrapped in BEGIN, then COMMIT (equal) or ROLLBACK
  (different), so a diverging write is undone on both;
- inside the client's transaction, a failing DO statement aborts it on both, so the
  client's COMMIT yields ROLLBACK on both.

The ReadyForQuery the client gets is always one a server sent, never made up. A group
that cannot be held (past the byte cap, a COPY FROM STDIN, a Flush without Sync) streams,
and its events say so.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime

from twinkly.interfaces import ISessionOperations
from twinkly.tracking.responses import SUB_BITS, SyncPoint, expectation_for
from twinkly.wire.backend import ErrorResponse
from twinkly.wire.frontend import encode

_GROUP_ENDS = frozenset((ord("Q"), ord("S"), ord("F")))
_QUERY, _PARSE, _TERMINATE = ord("Q"), ord("P"), ord("X")
_COPY_MESSAGES = frozenset((ord("d"), ord("c"), ord("f")))
_WRAPPABLE = frozenset(("select", "insert", "update", "delete", "merge"))
_READY = 6  # bytes of a ReadyForQuery message
SLOW_WAIT = 3.0  # seconds past the EXPLAIN statement_timeout a held group waits for plans


class Enforcer:
    """Holds one session's truth answers per group and settles each group."""

    def __init__(
        self,
        session: ISessionOperations,
        analyze: Callable[[str], Any],
        clock: IReactorTime,
        labels: tuple[str, str],
        cap: int,
        differences: bool = True,
        explain_timeout: float = 0.0,
    ) -> None:
        self.session = session
        self._analyze = analyze
        self._clock = clock
        self._labels = labels  # (truth, target)
        self.cap = cap
        self.differences = differences  # fail on mismatches (else only on slow statements)
        # How long a held group waits for the plans of its slow statements.
        self._slow_limit = explain_timeout + SLOW_WAIT
        self.holding = True  # whether the truth's answer is being held (events say)
        # slow_query events being written, each with what is known before its plans
        self.slow_pending: list[tuple[Deferred[dict], dict]] = []
        self.slow_waited = False  # the open group already waited for them
        self.queue: deque[tuple[int, bytes]] = deque()  # client messages not yet sent
        self.held = bytearray()  # truth bytes not yet delivered, from offset `start`
        self.start = 0
        self.group: int | None = None  # seq of the message that ends the open group
        self.streaming = False
        self.wrapped = False
        self.failure: dict | None = None
        self.internal: dict[int, str] = {}  # seq of Twinkly's own statement -> its role
        self.group_end = 0

    # --- client side -----------------------------------------------------------------

    def client_messages(self, messages: list[tuple[int, bytes]]) -> None:
        for message in messages:
            if message[0] in _COPY_MESSAGES and not self.queue:
                self.session.forward([message])  # data of the open group's COPY
            else:
                self.queue.append(message)
        self.pump()

    def pump(self) -> None:
        """Send the client's messages, one group at a time."""
        session = self.session
        while self.queue and self.group is None and not self.internal:
            batch = []
            while self.queue:
                message = self.queue.popleft()
                batch.append(message)
                if message[0] in _GROUP_ENDS or message[0] == _TERMINATE:
                    break
            last = batch[-1][0]
            if last in _GROUP_ENDS:
                # Answers still owed to earlier messages (sent without a Sync) would come
                # first and mix with this group's: then the group streams, unwrapped.
                busy = bool(session.truth_tracker.owed or session.target_tracker.owed)
                self.streaming = False
                self.failure = None
                self.wrapped = not busy and self._should_wrap(batch)
                if self.wrapped:
                    self._internal("BEGIN", "begin")
                self.group = session.statements + sum(
                    1 for t, p in batch if expectation_for(t, p) is not None
                )
                self.holding = True
                if busy:
                    self._stream()
            else:
                self._stream()  # no Sync yet (Flush-and-wait, Terminate): cannot hold
            session.forward(batch)

    def _should_wrap(self, batch: list[tuple[int, bytes]]) -> bool:
        """An autocommit group that writes, and only statements a transaction block
        accepts: wrap it so that it can be undone."""
        session = self.session
        if session.truth_tracker.status != "I":
            return False
        writes = False
        for type_byte, payload in batch:
            if type_byte == _QUERY:
                sql = payload[:-1]
            elif type_byte == _PARSE:
                end = payload.find(0)
                sql = payload[end + 1 : payload.find(0, end + 1)]
            else:
                continue
            for info in self._analyze(sql.decode("utf-8", "replace")):
                if info.kind not in _WRAPPABLE:
                    return False
                writes = writes or bool(info.writes)
        return writes

    def _internal(self, sql: str, role: str) -> None:
        self.internal[self.session.internal_query(sql)] = role

    # --- truth side -----------------------------------------------------------------

    def truth_bytes(self, data: bytes) -> None:
        if self.streaming or (self.group is None and not self.internal):
            self.session.deliver(data)  # between groups (notifications) or streaming
            self.start += len(data)
            return
        self.held += data
        if len(self.held) > self.cap or self.session.truth_tracker.copy_in:
            self._stream()

    def after_truth(self) -> None:
        """A COPY FROM STDIN needs the client to see CopyInResponse now."""
        if self.session.truth_tracker.copy_in and not self.streaming and self.group is not None:
            self._stream()

    def _stream(self) -> None:
        """This group cannot be held: what is held goes now, the rest as it comes."""
        if not self.streaming:
            self.streaming = True
            self.holding = False
        self._deliver_until(self.start + len(self.held))

    def _deliver_until(self, offset: int, drop: bool = False) -> None:
        count = offset - self.start
        if count <= 0:
            return
        if not drop:
            self.session.deliver(bytes(self.held[:count]))
        del self.held[:count]
        self.start = offset

    # --- settling -------------------------------------------------------------------

    def mismatch(self, event: dict) -> None:
        """The comparator found a real difference in the open group."""
        if self.differences and self.failure is None and self.group is not None:
            self.failure = event

    def slow(self, written: Deferred[dict], provisional: dict) -> None:
        """comparison.fail-on-slow-queries: a statement of the open group was too slow on
        the target. Its event (with both plans, for the DETAIL) is awaited before the
        group is settled, for SLOW_WAIT past the EXPLAIN statement_timeout at most (then
        ``provisional`` says what is known); a mismatch found meanwhile takes precedence."""
        group = self.group
        if group is None or self.streaming:
            return
        self.slow_pending.append((written, provisional))

        def written_(event: dict) -> dict:
            if self.failure is None and self.group == group and not self.streaming:
                self.failure = event
            return event

        written.addCallback(written_)

    def truth_synced(self, point: SyncPoint) -> None:
        """The truth's ReadyForQuery, once both backends' results up to it are judged."""
        seq = point.key >> SUB_BITS
        role = self.internal.pop(seq, None)
        if role == "begin":
            self._deliver_until(point.end, drop=True)
            return
        if role is not None:
            self._finish(point, role)
            return
        if seq != self.group:
            self._deliver_until(point.end)
            return
        waiting = [(d, p) for d, p in self.slow_pending if not d.called]
        if waiting and not self.streaming and not self.slow_waited:
            self._await_slow(point, waiting)  # the group stays open meanwhile
            return
        self.slow_pending = []
        if self.streaming or (self.failure is None and not self.wrapped):
            self._deliver_until(point.end)
            self._done()
        elif self.wrapped:
            self._internal("COMMIT" if self.failure is None else "ROLLBACK", "end-wrap")
            self.group_end = point.end
        elif point.status == "T":
            self._internal(
                "DO $$BEGIN RAISE EXCEPTION 'Twinkly: transaction aborted' USING ERRCODE = 'TW001';"
                " END$$",
                "abort",
            )
            self.group_end = point.end
        else:
            self._deliver_until(point.end - _READY, drop=True)
            self.session.deliver(self._error())
            self._deliver_until(point.end)  # the server's own ReadyForQuery
            self._done()

    def _finish(self, point: SyncPoint, role: str) -> None:
        """Twinkly's COMMIT, ROLLBACK or abort answered: tell the client, with the
        ReadyForQuery of that answer."""
        if self.failure is None:
            self._deliver_until(self.group_end - _READY)  # the group, less its ReadyForQuery
        else:
            self._deliver_until(self.group_end, drop=True)
            self.session.deliver(self._error())
        self._deliver_until(point.end - _READY, drop=True)
        self._deliver_until(point.end)
        self._done()

    def _await_slow(self, point: SyncPoint, waiting: list[tuple[Deferred, dict]]) -> None:
        """Settle the group once its slow statements' events are written, or at the
        deadline, whichever comes first, once."""
        group = self.group

        def resume(_: object = None) -> None:
            if self.slow_waited or self.group != group:
                return
            self.slow_waited = True
            if timer.active():
                timer.cancel()
            self.truth_synced(point)

        def deadline() -> None:
            if self.failure is None and self.group == group:
                late = "not ready in time"
                self.failure = {"plan_errors": {"truth": late, "target": late}, **waiting[0][1]}
            resume()

        timer = self._clock.callLater(self._slow_limit, deadline)
        gathered = DeferredList([d for d, _ in waiting], consumeErrors=True)
        gathered.addCallback(resume)

    def _done(self) -> None:
        self.group = None
        self.slow_waited = False
        self.wrapped = False
        self.failure = None
        self.holding = True
        self.pump()

    def _error(self) -> bytes:
        event = self.failure or {}
        truth, target = self._labels
        if event.get("kind") == "slow_query":
            message = (
                f"Twinkly: {target} is {event.get('ratio')}x slower than {truth}:"
                f" {event.get('reason')}"
            )
            return encode(ErrorResponse.make("ERROR", "TW003", message, _slow_detail(event)))
        if event.get("kind") == "error_divergence":
            code, what = "TW002", f"one-sided error: {event.get('reason')}"
        else:
            code, what = "TW001", f"result mismatch ({event.get('kind')})"
        message = f"Twinkly: {truth} and {target} disagree: {what}"
        return encode(ErrorResponse.make("ERROR", code, message, _detail(event)))


def _slow_detail(event: dict) -> str:
    """Both plans in a line each, then the most likely cause."""
    summaries = event.get("plan_summary") or {}
    errors = event.get("plan_errors") or {}
    parts = []
    for side in ("truth", "target"):
        label = (event.get(side) or {}).get("label", side)
        plan = summaries.get(side) or f"no plan ({errors.get(side) or 'not taken'})"
        parts.append(f"{label} plan: {plan}")
    insights = event.get("insights") or []
    if insights:
        parts.append(f"likely cause: {insights[0].get('message')}")
    parts.append(f"event {event.get('id')}")
    return "; ".join(parts)


def _detail(event: dict) -> str:
    differences = event.get("differences") or []
    if differences:
        shown = []
        for difference in differences[:3]:
            if isinstance(difference, dict):
                shown.append(
                    f"{difference.get('kind')}: truth {difference.get('truth')},"
                    f" target {difference.get('target')}"
                )
            else:
                shown.append(str(difference))
        more = f" (+{len(differences) - 3} more)" if len(differences) > 3 else ""
        return f"{'; '.join(shown)}{more}; event {event.get('id')}"
    truth, target = event.get("truth") or {}, event.get("target") or {}
    return (
        f"truth: {truth.get('tag') or truth.get('sqlstate')} {truth.get('message') or ''};"
        f" target: {target.get('tag') or target.get('sqlstate')} {target.get('message') or ''};"
        f" event {event.get('id')}"
    ).replace("  ", " ")

"""The reference implementation: one backend's response stream -> statement results, sync points.

Each backend gets a ``ResponseTracker``: a FIFO of the responses it owes, pushed as the
client's messages are forwarded, and consumed as the backend's messages arrive. It never
waits on a timer: the protocol itself says where each response ends. After an error in
the extended protocol the backend skips to the next Sync, and so does the FIFO.

Rows are not decoded: each DataRow adds its raw bytes' hash to an order-independent
digest and bumps a count, so a result of any size costs constant memory.

The C tracker (_tracker.c) does exactly this; the tests run every case on both.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from struct import Struct

from twinkly.tracking.results import (
    COPY_END,
    DESCRIBE_PORTAL,
    DESCRIBE_STATEMENT,
    EXECUTE,
    FUNCTION_CALL,
    QUERY,
    SUB_BITS,
    SYNC,
    SYNC_SUB,
    Item,
    StatementResult,
    SyncPoint,
)
from twinkly.wire.accel import scan_rows as _scan_rows
from twinkly.wire.backend import error_fields
from twinkly.wire.framing import MessageFramer

_ENDS_WITH_READY = frozenset((QUERY, SYNC, FUNCTION_CALL))
_EXECUTING = frozenset((EXECUTE, QUERY, FUNCTION_CALL))
_unpack_len = Struct("!I").unpack_from
_DIGEST_MASK = (1 << 64) - 1

# Backend message type bytes.
_ROW = ord("D")
_ROW_DESCRIPTION = ord("T")
_COMMAND_COMPLETE = ord("C")
_READY = ord("Z")
_ERROR = ord("E")
_NOTICE = ord("N")
_NOTIFICATION = ord("A")
_PARAMETER_STATUS = ord("S")
_EMPTY_QUERY = ord("I")
_SUSPENDED = ord("s")
_PARSE_COMPLETE = ord("1")
_BIND_COMPLETE = ord("2")
_CLOSE_COMPLETE = ord("3")
_NO_DATA = ord("n")
_PARAMETER_DESCRIPTION = ord("t")
_COPY_IN = ord("G")
_COPY_OUT = ord("H")
_COPY_BOTH = ord("W")
_COPY_DATA = ord("d")
_COPY_DONE = ord("c")
_FUNCTION_RESULT = ord("V")


def _is_fatal(payload: bytes) -> bool:
    """An ErrorResponse whose severity ends the session (PostgreSQL sends S first)."""
    if payload[:1] == b"S":
        return payload.startswith((b"SFATAL\0", b"SPANIC\0"))
    return error_fields(payload).get("S") in ("FATAL", "PANIC")


class ResponseTracker:
    """One backend's protocol state: what it owes, what it is in the middle of.

    ``emit`` receives each finished StatementResult and each SyncPoint in order.
    ``feed`` takes framed ``(type, payload)`` messages.
    """

    def __init__(
        self,
        emit: Callable[[Item], None],
        clock: Callable[[], float],
        sample_rows: int = 0,
        on_copy_in: Callable[[], None] | None = None,
    ) -> None:
        self._emit = emit
        self._clock = clock
        self._owed: deque[list] = deque()  # [kind, time sent, client message seq]
        self._current: StatementResult | None = None
        self._statement = 0  # statement number within the current simple query
        self._described: tuple[str | None, bytes] | None = None  # (SQL, RowDescription)
        self._skipping = False  # after an extended-protocol error, until Sync
        self._copy_in_syncs = False  # in an extended COPY FROM STDIN: Syncs are ignored
        self.status = "I"
        self.copy_in = False
        self.lost_track: str | None = None  # why results can no longer be trusted
        # The backend sent a FATAL (or PANIC) error: it says why it is about to close.
        self.fatal = False
        self.parameters: dict[bytes, bytes] = {}
        self.on_copy_in = on_copy_in  # told when the backend enters COPY FROM STDIN
        # Rows kept per result for a value-level comparison; past it, digest only.
        self.sample_rows = sample_rows
        self.last_key = -1  # key of the last result or sync point emitted
        self.consumed = 0  # bytes of complete messages tracked so far (a stream offset)
        self._message_end = 0
        self.copy_key = -1  # key of the last result that entered COPY FROM STDIN
        # What makes a time the server's own: a statement starts when it was sent, or
        # when the backend became free (its last ReadyForQuery), whichever is later;
        # a pause of this stream by Twinkly during it spoils it.
        self._last_ready = 0.0
        self._paused_since: float | None = None
        self._last_resumed = 0.0
        self._group_executes = 0  # Executes started since the last ReadyForQuery

    @property
    def owed(self) -> int:
        return len(self._owed)

    def owed_contexts(self) -> list[tuple]:
        """The contexts (SQL, Bind) of the statements still owed, oldest first."""
        return [entry[3] for entry in self._owed if entry[3] is not None]

    @property
    def current(self) -> StatementResult | None:
        """The result being received right now, if any."""
        return self._current

    def expect(self, kind: str, now: float, seq: int = 0, context: tuple | None = None) -> None:
        """The client sent message number ``seq``, for which this backend now owes
        ``kind``; ``context`` (the SQL, the Bind) travels with the result."""
        if self._copy_in_syncs:
            if kind == SYNC:
                return  # the backend ignores Sync during COPY FROM STDIN
            if kind == COPY_END:
                self._copy_in_syncs = False
        if self._skipping:
            if kind != SYNC:
                return
            self._skipping = False
        self._owed.append([kind, now, seq, context])

    def paused(self) -> None:
        """Twinkly stopped reading this backend: results it is in the middle of would
        look slower than the server made them."""
        if self._paused_since is None:
            self._paused_since = self._clock()

    def resumed(self) -> None:
        if self._paused_since is not None:
            self._paused_since = None
            self._last_resumed = self._clock()

    def sent(self, now: float) -> None:
        """Client messages held back (behind a possible COPY) went out only now."""
        for entry in self._owed:
            if entry[1] < now:
                entry[1] = now

    def receive(self, framer: MessageFramer, data: bytes) -> None:
        """Frame raw bytes from the backend with ``framer`` and track them.

        The hot path of large results: DataRows and CopyData are counted and digested
        straight from the received buffer, with no list of messages built first.
        """
        joined = framer.join(data) if framer.held else data
        if joined is None:
            return
        data = joined
        size = len(data)
        limit = framer.limit
        pos = 0
        need = 5
        # Rows of the current result are counted in locals and written back when
        # another message comes (or the buffer ends): attribute stores per row cost.
        base = self.consumed  # where joined[0] sits in the stream: held bytes were not counted
        current = self._current
        rows = digest = 0
        room = self._sample_room(current)
        while size - pos >= 5:
            type_byte = data[pos]
            if current is not None and (type_byte == _ROW or type_byte == _COPY_DATA):
                # A run of rows: counted and digested in one call (C when built).
                end, count, run_digest, room = _scan_rows(data, pos, limit, current.sample, room)
                if count:
                    rows += count
                    digest += run_digest
                    if room < 0 and current.sample is not None:
                        current.sample = None  # more rows than kept: digest only
                    pos = end
                    continue
            length = _unpack_len(data, pos + 1)[0]
            if length < 4 or length > limit:
                raise framer.length_error(data, pos, length)
            end = pos + 1 + length
            if end > size:
                need = end - pos
                break
            if rows:
                current.rows += rows  # type: ignore[union-attr]
                current.digest += digest  # type: ignore[union-attr]
                rows = digest = 0
            self._message_end = base + end
            self._handle(type_byte, data[pos + 5 : end])
            current = self._current
            room = self._sample_room(current)
            pos = end
        if rows:
            current.rows += rows  # type: ignore[union-attr]
            current.digest += digest  # type: ignore[union-attr]
        self.consumed = base + pos
        if pos < size:
            framer.hold(data, pos, need)

    def _sample_room(self, result: StatementResult | None) -> int:
        """Rows the result may still keep for a value-level diff; -1 when none."""
        if result is None or result.sample is None:
            return -1
        return self.sample_rows - len(result.sample)

    def feed(self, messages: list[tuple[int, bytes]]) -> None:
        """Track messages that were already framed."""
        for type_byte, payload in messages:
            self._handle(type_byte, payload)

    # --- the state machine -------------------------------------------------------

    def _head(self) -> list | None:
        """What is owed next, past the markers of COPYs that are over."""
        owed = self._owed
        while owed and owed[0][0] == COPY_END:
            owed.popleft()
        return owed[0] if owed else None

    def _start(self) -> StatementResult | None:
        if self._current is None:
            head = self._head()
            if head is None:
                return None
            sent = head[1]
            result = StatementResult(
                head[0],
                sent if sent > self._last_ready else self._last_ready,
                (head[2] << SUB_BITS) | self._statement,
                head[3],
            )
            if head[0] == EXECUTE:
                self._group_executes += 1
                # Several Executes before one Sync are answered in one flush: their
                # times cannot be told apart.
                result.timed = self._group_executes == 1 and self._alone_in_group()
            elif self._group_executes:  # a Query after an Execute that had no Sync
                result.timed = False
            described, context = self._described, head[3]
            if head[0] == EXECUTE and described and context and context[0] == described[0]:
                result.columns = described[1]
                result.columns_described = True
            self._current = result
        return self._current

    def _alone_in_group(self) -> bool:
        """Nothing else that executes is owed before the next Sync (the head is this
        one): a Query or a function call also ends in a flush of everything before."""
        for index, entry in enumerate(self._owed):
            if index and entry[0] in _EXECUTING:
                return False
            if entry[0] == SYNC:
                return True
        return True

    def _finish(self, pop: bool) -> None:
        result = self._current
        now = self._clock()
        if result is not None:
            self._current = None
            result.finished = now
            if self._paused_since is not None or self._last_resumed > result.started:
                result.timed = False
            result.end = self._message_end
            result.digest &= _DIGEST_MASK
            self.copy_in = False
            self.last_key = result.key
            if self._owed and result.request in _ENDS_WITH_READY and not pop:
                self._owed[0][1] = now  # the next statement of a simple query starts now
                self._statement += 1
            self._emit(result)
        if pop and self._owed:
            self._owed.popleft()

    def _handle(self, type_byte: int, payload: bytes) -> None:  # noqa: C901 - one branch per message type
        if type_byte == _NOTICE or type_byte == _NOTIFICATION:
            return
        if type_byte == _PARAMETER_STATUS:
            name, _, rest = payload.partition(b"\0")
            self.parameters[name] = rest.rstrip(b"\0")
            return
        if type_byte == _READY:
            self._ready(payload)
            return
        if type_byte == _ERROR and _is_fatal(payload):
            self.fatal = True
        result = self._start()
        if result is None:
            if type_byte == _ERROR:
                return  # e.g. FATAL at shutdown: nothing was owed; the connection ends
            self._lose_track(f"unexpected message {chr(type_byte)!r} with nothing owed")
            return
        kind = result.request
        if type_byte == _COMMAND_COMPLETE:
            result.tag = payload[:-1]
            self._finish(pop=kind not in _ENDS_WITH_READY)
        elif type_byte == _ROW_DESCRIPTION:
            result.columns = payload
            if kind == DESCRIBE_STATEMENT or kind == DESCRIBE_PORTAL:
                context = result.context
                self._described = (context[0] if context else None, payload)
                self._finish(pop=True)
        elif type_byte == _ERROR:
            self._error(result, payload)
        elif type_byte == _EMPTY_QUERY:
            result.empty = True
            self._finish(pop=kind not in _ENDS_WITH_READY)
        elif type_byte == _SUSPENDED:
            result.suspended = True
            self._finish(pop=True)
        elif type_byte in (_PARSE_COMPLETE, _BIND_COMPLETE, _CLOSE_COMPLETE, _NO_DATA):
            self._finish(pop=True)
        elif type_byte == _PARAMETER_DESCRIPTION:
            result.parameter_types = payload
        elif type_byte == _COPY_IN:
            result.copy = "in"
            self.copy_in = True
            self.copy_key = result.key
            if kind == EXECUTE:
                self._ignore_syncs_during_copy()
            if self.on_copy_in is not None:
                self.on_copy_in()
        elif type_byte == _COPY_OUT or type_byte == _COPY_BOTH:
            result.copy = "out" if type_byte == _COPY_OUT else "both"
        elif type_byte == _COPY_DONE:
            pass
        elif type_byte == _FUNCTION_RESULT:
            result.rows = 1
            result.digest = hash(payload)
            self._finish(pop=False)
        elif type_byte == _ROW or type_byte == _COPY_DATA:
            # Rows arriving through ``feed``; ``receive`` counts them inline, the same way.
            result.rows += 1
            result.digest += hash(payload)
            if result.sample is not None:
                if result.rows <= self.sample_rows:
                    result.sample.append(payload)
                else:
                    result.sample = None
        else:
            self._lose_track(f"unexpected message {chr(type_byte)!r} for request {kind}")

    def _ignore_syncs_during_copy(self) -> None:
        """An extended-protocol COPY FROM STDIN began: the backend ignores any Sync the
        client sent before ending the COPY (libpq sends one right after Execute)."""
        owed = self._owed
        kept: deque[list] = deque([owed.popleft()]) if owed else deque()
        while owed:
            entry = owed.popleft()
            if entry[0] == COPY_END:
                kept.append(entry)
                kept.extend(owed)
                owed.clear()
                break
            if entry[0] != SYNC:
                kept.append(entry)
        else:
            self._copy_in_syncs = True
        self._owed = kept

    def _error(self, result: StatementResult, payload: bytes) -> None:
        result.error = payload
        kind = result.request
        if kind in _ENDS_WITH_READY:
            self._finish(pop=False)
            return
        # Extended protocol: the backend now ignores everything until Sync.
        self._finish(pop=True)
        self._copy_in_syncs = False
        while self._owed and self._owed[0][0] != SYNC:
            self._owed.popleft()
        if not self._owed:
            self._skipping = True

    def _ready(self, payload: bytes) -> None:
        self.status = chr(payload[0]) if payload else "?"
        if self._current is not None:
            self._finish(pop=False)
        head = self._head()
        if head is None:
            self._lose_track("ReadyForQuery with nothing owed")
            return
        self._owed.popleft()
        if head[0] not in _ENDS_WITH_READY:
            self._lose_track(f"ReadyForQuery while owing {head[0]}")
            return
        self._skipping = False
        self._statement = 0
        self._group_executes = 0
        self.last_key = (head[2] << SUB_BITS) | SYNC_SUB
        self._last_ready = now = self._clock()
        self._emit(SyncPoint(self.status, now, self.last_key, self._message_end))

    def _lose_track(self, why: str) -> None:
        if self.lost_track is None:
            self.lost_track = why
        self._owed.clear()
        self._current = None
        self._statement = 0

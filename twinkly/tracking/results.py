"""What a backend's answers become: statement results and sync points, and the
requests a client's message makes a backend owe.

Both trackers (the reference in python_tracker.py, the C one in _tracker.c) make these.
The pure-Python classes below serve the Python tracker; ``CStatementResult`` and
``CSyncPoint`` are the same fields in C, made by the C tracker without running any
Python per result. Which pair the proxy uses is chosen in ``responses.py``.
"""

from __future__ import annotations

from twinkly.wire.backend import error_fields

# What a client message makes the backend owe.
QUERY = "Q"  # any number of statement results, then ReadyForQuery
PARSE = "P"
BIND = "B"
DESCRIBE_STATEMENT = "DS"  # ParameterDescription, then RowDescription or NoData
DESCRIBE_PORTAL = "DP"  # RowDescription or NoData
EXECUTE = "E"
CLOSE = "C"
SYNC = "S"  # ReadyForQuery
FUNCTION_CALL = "F"  # FunctionCallResponse, then ReadyForQuery
COPY_END = "c"  # the client ended a COPY FROM STDIN: owes nothing, marks a boundary

# Results are keyed by the client message they answer: seq << SUB_BITS | statement
# number within a simple query. A sync point sorts after every result of its message.
SUB_BITS = 20
SYNC_SUB = (1 << SUB_BITS) - 1


def expectation_for(type_byte: int, payload: bytes) -> str | None:
    """What the backend will owe for one client message; None if nothing."""
    kind = CLIENT_EXPECTATIONS.get(type_byte)
    if kind == DESCRIBE_STATEMENT and payload[:1] == b"P":
        return DESCRIBE_PORTAL
    return kind


# Client message type -> what it makes the backend owe (Describe: see expectation_for).
CLIENT_EXPECTATIONS = {
    ord("Q"): QUERY,
    ord("P"): PARSE,
    ord("B"): BIND,
    ord("D"): DESCRIBE_STATEMENT,
    ord("E"): EXECUTE,
    ord("C"): CLOSE,
    ord("S"): SYNC,
    ord("F"): FUNCTION_CALL,
    ord("c"): COPY_END,
    ord("f"): COPY_END,
}


class ResultText:
    """The decoded views of a result's raw fields, for either implementation."""

    __slots__ = ()
    error: bytes | None
    tag: bytes | None
    request: str
    rows: int

    @property
    def sqlstate(self) -> str | None:
        return None if self.error is None else error_fields(self.error).get("C", "")

    @property
    def error_message(self) -> str | None:
        return None if self.error is None else error_fields(self.error).get("M", "")

    @property
    def command_tag(self) -> str | None:
        return None if self.tag is None else self.tag.decode("utf-8", "replace")

    def __repr__(self) -> str:
        what = self.command_tag or (f"ERROR {self.sqlstate}" if self.error else "")
        return f"<StatementResult {self.request} rows={self.rows} {what}>"


class StatementResult(ResultText):
    """Everything one backend answered to one request: the unit that gets compared.

    Kept small on purpose: raw RowDescription and CommandComplete payloads, a row count
    and digest, the error's payload. Decoding happens only when a comparison asks.
    """

    __slots__ = (
        "columns",
        "columns_described",
        "context",
        "copy",
        "digest",
        "empty",
        "end",
        "error",
        "finished",
        "key",
        "parameter_types",
        "request",
        "rows",
        "sample",
        "started",
        "suspended",
        "tag",
        "timed",
    )

    def __init__(
        self, request: str, started: float, key: int = 0, context: tuple | None = None
    ) -> None:
        self.request = request
        self.key = key  # which client message (and statement) this answers
        self.context = context  # (SQL text, raw Bind payload or None), when known
        self.end = 0  # offset in the backend's stream just past this result
        self.sample: list[bytes] | None = [] if context is not None else None
        self.started = started
        self.finished = started
        # False when the time is not the server's alone (its stream was paused by Twinkly).
        self.timed = True
        self.columns: bytes | None = None
        # True when ``columns`` came from an earlier Describe (an Execute's rows carry
        # no RowDescription of their own): for decoding rows, not for comparing columns.
        self.columns_described = False
        self.parameter_types: bytes | None = None
        self.rows = 0
        self.digest = 0
        self.tag: bytes | None = None
        self.error: bytes | None = None
        self.copy: str | None = None
        self.empty = False
        self.suspended = False

    @property
    def elapsed(self) -> float:
        return self.finished - self.started


class SyncPoint:
    """A ReadyForQuery: the end of a simple query, a Sync, or a function call."""

    __slots__ = ("end", "key", "status", "time")

    def __init__(self, status: str, time: float, key: int = SYNC_SUB, end: int = 0) -> None:
        self.status = status
        self.time = time
        self.key = key
        self.end = end  # offset in the backend's stream just past the ReadyForQuery

    def __repr__(self) -> str:
        return f"<SyncPoint {self.status}>"


Item = StatementResult | SyncPoint


try:
    from twinkly.tracking import _tracker  # type: ignore[attr-defined]
except ImportError:  # built without a compiler: the Python tracker serves
    _tracker = None

if _tracker is not None:

    class CStatementResult(_tracker.Result, ResultText):  # type: ignore[misc, name-defined]
        """StatementResult's fields in C, made by the C tracker."""

        __slots__ = ()

    class CSyncPoint(_tracker.Sync):  # type: ignore[misc, name-defined]
        """SyncPoint's fields in C, made by the C tracker."""

        __slots__ = ()

        def __repr__(self) -> str:
            return f"<SyncPoint {self.status}>"

    _tracker.register(CStatementResult, CSyncPoint)

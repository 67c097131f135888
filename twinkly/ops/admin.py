"""The admin console: what a client connected to the virtual database ``twinkly`` talks to.

Like pgbouncer's console, it speaks just enough of the protocol for psql: simple queries
answered from an IStatus, everything else refused with a clean error. Sans-IO: framed
client messages in, response bytes out; the connection handling owns the socket.
"""

from __future__ import annotations

import datetime
import math
import re
import secrets
from collections.abc import Callable, Iterable, Sequence

from twisted.logger import Logger
from zope.interface import implementer

from twinkly.config.schema import ConfigError
from twinkly.interfaces import IAdminConsoles
from twinkly.ops.status import IStatus
from twinkly.report.events import MISMATCH_KINDS
from twinkly.wire.backend import (
    BackendKeyData,
    Column,
    CommandComplete,
    DataRow,
    EmptyQueryResponse,
    ErrorResponse,
    NoticeResponse,
    ParameterStatus,
    ReadyForQuery,
    RowDescription,
)
from twinkly.wire.buffers import Reader
from twinkly.wire.framing import ProtocolViolation
from twinkly.wire.frontend import Query, encode

log = Logger()

TEXT, INT8, BOOL, FLOAT8, TIMESTAMPTZ = 25, 20, 16, 701, 1184
_TYPE_SIZES = {TEXT: -1, INT8: 8, BOOL: 1, FLOAT8: 8, TIMESTAMPTZ: 8}

MISMATCHES_SHOWN = 50
MISMATCHES_SCANNED = 200  # other kinds (noise...) are interleaved: look further back

HELP = (
    ("SHOW STATS", "sessions, statements, outcomes and event counts, uptime"),
    ("SHOW SESSIONS", "the client sessions"),
    ("SHOW MISMATCHES", f"the last {MISMATCHES_SHOWN} mismatch events"),
    ("SHOW SLOW", f"the last {MISMATCHES_SHOWN} slow statements and their likely cause"),
    ("SHOW FINGERPRINTS", "statements by fingerprint: executions, mismatches, latency"),
    ("SHOW CONFIG", "the effective configuration (secrets hidden)"),
    ("SHOW HELP", "this list"),
    ("MUTE <fingerprint>", "stop reporting events for a fingerprint"),
    ("UNMUTE <fingerprint>", "report a fingerprint again"),
    ("RELOAD", "re-read the configuration file"),
    ("RESET TIMINGS", "forget every fingerprint's latency histograms"),
    ("TRACE <session>", "trace one running session's protocol (see SHOW SESSIONS)"),
    ("UNTRACE <session>", "stop tracing it"),
)

# Messages of the extended query protocol: after refusing one, skip to Sync like PostgreSQL.
_EXTENDED = frozenset(b"PBDECH")
_SYNC, _QUERY, _TERMINATE = ord("S"), ord("Q"), ord("X")
_COPY = frozenset(b"dcf")  # outside COPY, PostgreSQL ignores these; so do we

_FINGERPRINT = re.compile(r"'([0-9a-f]+)'|([0-9a-f]+)", re.I)
_UNKNOWN_SHOWN = 80  # characters of an unknown command quoted back


def _encode_all(messages: Iterable[object]) -> bytes:
    return b"".join(encode(m) for m in messages)


def _error(sqlstate: str, message: str) -> ErrorResponse:
    return ErrorResponse.make("ERROR", sqlstate, message)


def _notice(message: str) -> NoticeResponse:
    return NoticeResponse.make("NOTICE", "00000", message)  # type: ignore[return-value]


def split_statements(text: str) -> list[str]:
    """The statements of a simple query: split on ';' outside quotes, empties dropped."""
    statements, start, quote = [], 0, ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:  # a doubled quote closes and reopens: same result
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            statements.append(text[start:i])
            start = i + 1
    statements.append(text[start:])
    return [s.strip() for s in statements if s.strip()]


def _float_text(value: float) -> str:
    """float8 as PostgreSQL writes it (Infinity, NaN), so drivers can parse it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = repr(float(value))  # shortest round-trip digits, as PostgreSQL 12+ writes them
    return text[:-2] if text.endswith(".0") else text  # ... and 2, not 2.0


def _timestamptz(value: float | str) -> str:
    """Epoch seconds or an ISO string -> timestamptz text in PostgreSQL's ISO style, UTC."""
    if isinstance(value, str):
        moment = datetime.datetime.fromisoformat(value).astimezone(datetime.UTC)
    else:
        moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S.%f}+00"


def _cell(value: object, oid: int) -> bytes | None:
    """One value in the text format of its column's type; None is NULL."""
    if value is None:
        return None
    if oid == BOOL:
        return b"t" if value else b"f"
    if oid == INT8:
        return str(int(value)).encode()  # type: ignore[call-overload]
    if oid == FLOAT8:
        return _float_text(float(value)).encode()  # type: ignore[arg-type]
    if oid == TIMESTAMPTZ:
        return _timestamptz(value).encode()  # type: ignore[arg-type]
    return str(value).encode("utf-8", "replace")


def _pick(columns: Sequence[tuple[str, int]], items: Iterable[dict]) -> list[list[object]]:
    """The values of the named columns from each dict (missing keys are NULL)."""
    return [[item.get(name) for name, _ in columns] for item in items]


def _rows(columns: Sequence[tuple[str, int]], rows: Iterable[Sequence[object]]) -> list[object]:
    """RowDescription, one DataRow per row, CommandComplete: a whole SHOW answer."""
    description = RowDescription(
        tuple(Column(name, type_oid=oid, type_size=_TYPE_SIZES[oid]) for name, oid in columns)
    )
    oids = [oid for _, oid in columns]
    data = [DataRow(tuple(_cell(v, oid) for v, oid in zip(row, oids, strict=True))) for row in rows]
    return [description, *data, CommandComplete("SHOW")]


class AdminConsole:
    """One admin client's console."""

    def __init__(self, status: IStatus) -> None:
        self.status = status
        self._skipping = False  # an extended message was refused: ignore all until Sync
        self._show: dict[str, Callable[[], list[object]]] = {
            "stats": self._stats,
            "sessions": self._sessions,
            "mismatches": self._mismatches,
            "slow": self._slow,
            "fingerprints": self._fingerprints,
            "config": self._config,
            "help": self._help,
        }

    def handle(self, type_byte: int, payload: bytes) -> tuple[bytes, bool]:
        """One framed client message -> the bytes to send back and whether to close."""
        if type_byte == _TERMINATE:
            return b"", True
        if type_byte == _SYNC:
            self._skipping = False
            return encode(ReadyForQuery("I")), False
        if self._skipping or type_byte in _COPY:
            return b"", False
        refusal = _error("0A000", "the admin console accepts simple queries only")
        if type_byte in _EXTENDED:
            self._skipping = True  # the ReadyForQuery comes with the Sync
            return encode(refusal), False
        if type_byte != _QUERY:
            return _encode_all([refusal, ReadyForQuery("I")]), False
        try:
            reader = Reader(payload)
            sql = Query.read(reader).sql
            reader.done()
        except ProtocolViolation as e:
            return encode(ErrorResponse.make("FATAL", e.sqlstate, str(e))), True
        return self._query(sql), False

    def _query(self, sql: str) -> bytes:
        """A simple query: each statement in turn, stopping at the first error as
        PostgreSQL does, then one ReadyForQuery."""
        statements = split_statements(sql)
        messages: list[object] = [] if statements else [EmptyQueryResponse()]
        for statement in statements:
            answer = self._execute(statement)
            messages.extend(answer)
            if type(answer[-1]) is ErrorResponse:  # not a NoticeResponse, its subclass
                break
        messages.append(ReadyForQuery("I"))
        return _encode_all(messages)

    def run(self, sql: str) -> bytes:
        """One statement -> its answer: rows, a CommandComplete, or an ErrorResponse."""
        return _encode_all(self._execute(sql))

    def _execute(self, sql: str) -> list[object]:
        """One statement as messages; the last one is a CommandComplete or an error.
        Nothing raised here reaches the connection: a bug answers XX000 and is logged."""
        text = " ".join(sql.strip().rstrip("; \t\r\n").split())
        if not text:
            return [EmptyQueryResponse()]
        try:
            return self._dispatch(text)
        except Exception as e:
            log.failure("admin command {command!r} failed", command=text)
            return [_error("XX000", str(e) or type(e).__name__)]

    def _dispatch(self, text: str) -> list[object]:
        words = text.lower().split()
        if words == ["help"]:
            return self._help()
        if len(words) == 2 and words[0] == "show" and words[1] in self._show:
            return self._show[words[1]]()
        if words == ["reload"]:
            return self._reload()
        if len(words) == 2 and words[0] in ("trace", "untrace") and words[1].isdigit():
            try:
                message = self.status.trace(int(words[1]), words[0] == "trace")
            except KeyError as e:  # an unknown session: the user's mistake, not ours
                return [_error("42704", str(e.args[0]))]
            return [_notice(message), CommandComplete(words[0].upper())]
        if words == ["reset", "timings"]:
            dropped = self.status.reset_timings()
            return [
                _notice(f"forgot the timings of {dropped} fingerprints"),
                CommandComplete("RESET"),
            ]
        if words[0] in ("mute", "unmute"):
            verb = words[0].upper()
            token = _FINGERPRINT.fullmatch(text[len(verb) :].strip())
            if len(words) != 2 or token is None:
                return [_error("42601", f"{verb} needs one fingerprint (a hex token)")]
            return self._mute(verb, (token.group(1) or token.group(2)).lower())
        shown = text if len(text) <= _UNKNOWN_SHOWN else text[: _UNKNOWN_SHOWN - 3] + "..."
        return [_error("42601", f'unknown admin command "{shown}"; try SHOW HELP')]

    def _stats(self) -> list[object]:
        totals = self.status.totals()
        rows: list[tuple[str, object]] = [
            ("sessions", totals["sessions"]),
            ("sessions_not_compared", totals.get("sessions_not_compared", 0)),
            ("statements", totals["statements"]),
        ]
        target = totals.get("target") or {}
        rows.append(("target_outages", target.get("outages", 0)))
        # Some names are both an outcome and an event kind (noise, nondeterministic).
        rows += [(f"outcomes.{k}", v) for k, v in totals.get("outcomes", {}).items()]
        rows += [(f"events.{k}", v) for k, v in totals.get("events", {}).items()]
        rows.append(("uptime_s", totals["uptime_s"]))
        return _rows([("name", TEXT), ("value", INT8)], rows)

    def _sessions(self) -> list[object]:
        columns = [("id", INT8), ("client", TEXT), ("user", TEXT), ("database", TEXT)]
        columns += [("started", TIMESTAMPTZ), ("statements", INT8), ("status", TEXT)]
        return _rows(columns, _pick(columns, self.status.sessions()))

    def _mismatches(self) -> list[object]:
        events = self.status.events(kind=None, limit=MISMATCHES_SCANNED)
        chosen = [e for e in events if e.get("kind") in MISMATCH_KINDS][:MISMATCHES_SHOWN]
        columns = [("id", TEXT), ("time", TIMESTAMPTZ), ("kind", TEXT)]
        columns += [("fingerprint", TEXT), ("statement", TEXT), ("reason", TEXT)]
        return _rows(columns, _pick(columns, chosen))

    def _slow(self) -> list[object]:
        events = self.status.events(kind="slow_query", limit=MISMATCHES_SHOWN)
        columns = [("id", TEXT), ("time", TIMESTAMPTZ), ("fingerprint", TEXT)]
        columns += [("statement", TEXT), ("ratio", FLOAT8), ("truth_ms", FLOAT8)]
        columns += [("target_ms", FLOAT8), ("likely_cause", TEXT)]
        flat = [
            {
                **e,
                "truth_ms": (e.get("truth") or {}).get("elapsed_ms"),
                "target_ms": (e.get("target") or {}).get("elapsed_ms"),
                "likely_cause": next(
                    (i.get("message") for i in e.get("insights") or [] if isinstance(i, dict)),
                    None,
                ),
            }
            for e in events
        ]
        return _rows(columns, _pick(columns, flat))

    def _fingerprints(self) -> list[object]:
        columns = [("fingerprint", TEXT), ("statement", TEXT), ("executions", INT8)]
        columns += [("mismatches", INT8), ("muted", BOOL), ("truth_p50_ms", FLOAT8)]
        columns += [("target_p50_ms", FLOAT8), ("p50_ratio", FLOAT8)]
        flat = [
            {
                **f,
                "truth_p50_ms": (f.get("truth") or {}).get("p50_ms"),
                "target_p50_ms": (f.get("target") or {}).get("p50_ms"),
            }
            for f in self.status.fingerprints()
        ]
        return _rows(columns, _pick(columns, flat))

    def _config(self) -> list[object]:
        return _rows([("key", TEXT), ("value", TEXT)], self.status.config_items())

    def _help(self) -> list[object]:
        return _rows([("command", TEXT), ("description", TEXT)], HELP)

    def _mute(self, verb: str, fingerprint: str) -> list[object]:
        if verb == "MUTE":
            changed = self.status.mute(fingerprint)
            already = f"fingerprint {fingerprint} is already muted"
        else:
            changed = self.status.unmute(fingerprint)
            already = f"fingerprint {fingerprint} is not muted"
        notices: list[object] = [] if changed else [_notice(already)]
        return [*notices, CommandComplete(verb)]

    def _reload(self) -> list[object]:
        try:
            changed = self.status.reload()
        except ConfigError as e:
            return [_error("F0000", str(e))]
        summary = "changed: " + ", ".join(changed) if changed else "nothing changed"
        return [_notice(summary), CommandComplete("RELOAD")]


def admin_greeting() -> bytes:
    """What a client gets after login: the parameters psql reads, a cancel key (a
    cancel has nothing to stop here), and ReadyForQuery."""
    parameters = {
        "server_version": "15.0 (Twinkly admin console)",
        "server_encoding": "UTF8",
        "client_encoding": "UTF8",
        "DateStyle": "ISO, MDY",
        "integer_datetimes": "on",
        "standard_conforming_strings": "on",
        "TimeZone": "UTC",
    }
    messages: list[object] = [ParameterStatus(k, v) for k, v in parameters.items()]
    messages.append(BackendKeyData(secrets.randbelow(2**31 - 1) + 1, secrets.token_bytes(4)))
    messages.append(ReadyForQuery("I"))
    return _encode_all(messages)


@implementer(IAdminConsoles)
class AdminConsoles:
    """The console of the virtual database ``proxy.admin.database``.

    The status it shows reads the running proxy, which is built with these consoles:
    so it is given as ``status_of``, asked for when a console opens."""

    def __init__(self, users: tuple[str, ...], status_of: Callable[[], IStatus | None]) -> None:
        self._users = frozenset(users)
        self._status_of = status_of

    def allowed(self, user: str) -> bool:
        return user in self._users and self._status_of() is not None

    def open(self) -> AdminConsole:
        status = self._status_of()
        assert status is not None
        return AdminConsole(status)

    def greeting(self) -> bytes:
        return admin_greeting()

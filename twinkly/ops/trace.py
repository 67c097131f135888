"""The protocol trace (``debug.log-protocol``): every message of traced sessions, decoded.

When two servers disagree it helps to see exactly what crossed each of the three legs of
a session. Each leg direction gets its own framer fed with the raw bytes as they pass, and
each message becomes one timestamped line in a file shared by all traced sessions. The
trace is for debugging only: off by default, bounded in size, and it never raises into the
session it watches (a broken trace must not break a connection).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, BinaryIO

from zope.interface import implementer

from twinkly.interfaces import ISessionTracer
from twinkly.sql.analysis import analyze
from twinkly.wire import backend as b
from twinkly.wire import frontend as f
from twinkly.wire.framing import MessageFramer, ProtocolViolation, StartupFramer

__all__ = ["ProtocolTrace", "SessionTracer", "session_tap"]

MAX_VALUE_CHARS = 64  # per Bind parameter / DataRow value
MAX_ROW_VALUES = 8  # DataRow columns shown
MAX_NAMES = 32  # RowDescription column names shown
MAX_SQL_CHARS = 2048  # a 1 MB INSERT should not eat the whole trace in one line

_AUTH_KINDS = {0: "Ok", 2: "KerberosV5", 3: "CleartextPassword", 5: "MD5Password", 7: "GSS"}
_AUTH_KINDS |= {8: "GSSContinue", 9: "SSPI", 10: "SASL", 11: "SASLContinue", 12: "SASLFinal"}


def _stamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit})"


def _value(value: bytes | None, binary: bool) -> str:
    """A parameter or column value: quoted text, or hex when binary or not UTF-8."""
    if value is None:
        return "NULL"
    if not binary:
        try:
            return repr(_clip(value.decode("utf-8"), MAX_VALUE_CHARS))
        except UnicodeDecodeError:
            pass
    return "\\x" + _clip(value.hex(), MAX_VALUE_CHARS)


def _values(values: tuple[bytes | None, ...], formats: tuple[int, ...], limit: int) -> str:
    """Formats as in Bind: none = all text, one = applies to all, else one per value."""
    shown = []
    for i, value in enumerate(values[:limit]):
        fmt = formats[0] if len(formats) == 1 else formats[i] if i < len(formats) else 0
        shown.append(_value(value, fmt == 1))
    more = ", ..." if len(values) > limit else ""
    return f"[{', '.join(shown)}{more}]"


class ProtocolTrace:
    """One trace file shared by all traced sessions.

    The file never grows beyond ``max_bytes`` (counting what it held before: it is opened
    for appending): the line that would not fit is replaced by a final
    ``... trace truncated at N bytes`` line, and later lines are only counted in
    ``dropped``. ``sessions`` None traces every session, otherwise only those ids.
    """

    def __init__(
        self,
        path: str,
        max_bytes: int,
        clock: Callable[[], float],
        redact: bool = False,
        sessions: frozenset[int] | None = None,
    ) -> None:
        self.path = path
        self.redact = redact
        self.dropped = 0
        self._clock = clock
        self._max = max_bytes
        self._sessions = None if sessions is None else set(sessions)
        self._excluded: set[int] = set()
        self._marker = f"... trace truncated at {max_bytes} bytes\n".encode()
        self._file: BinaryIO | None = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._size = self._file.tell()
        self._stopped = False
        # (session, leg name) -> "SSL" / "GSSENC": a one-byte answer is due on that leg's "<"
        self._handshakes: dict[tuple[int, str], str] = {}

    def wants(self, session_id: int) -> bool:
        """Whether this session is traced; callers skip ``leg`` (and all cost) otherwise."""
        if session_id in self._excluded:
            return False
        return self._sessions is None or session_id in self._sessions

    def trace_session(self, session_id: int) -> None:
        self._excluded.discard(session_id)
        if self._sessions is not None:
            self._sessions.add(session_id)

    def untrace_session(self, session_id: int) -> None:
        """Also silences the legs already handed out for it (they keep framing, to stay in
        step should the session be traced again)."""
        if self._sessions is None:
            self._excluded.add(session_id)
        else:
            self._sessions.discard(session_id)

    def leg(
        self, session_id: int, name: str, direction: str, startup: bool = False
    ) -> Callable[[bytes], None]:
        """A function to feed one direction of one leg with its raw bytes, in order.

        ``direction`` ">" carries frontend messages (client->proxy, proxy->backend), "<"
        backend ones. ``startup`` (">" only): the stream begins with untagged packets.
        """
        return _Leg(self, session_id, name, direction, startup)

    def flush(self) -> None:
        if self._file is not None and not self._stopped:
            try:
                self._file.flush()
            except OSError:
                self._stopped = True

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None

    def _accepting(self, session_id: int) -> bool:
        """Whether a line for this session should be built at all."""
        if self._stopped or self._file is None:
            self.dropped += 1
            return False
        return self.wants(session_id)

    def _write(self, label: str, text: str) -> None:
        """Only after ``_accepting``, which checked that the file is open."""
        file = self._file
        assert file is not None
        line = f"{_stamp(self._clock())} {label} {text}\n".encode("utf-8", "backslashreplace")
        try:
            if self._size + len(line) + len(self._marker) > self._max:
                self._stopped = True
                self.dropped += 1
                line = self._marker
            file.write(line)
            self._size += len(line)
        except OSError:  # disk full and the like: give up the trace, not the session
            self._stopped = True


class _Leg:
    """Frames and describes one direction of one leg; never raises."""

    __slots__ = (
        "_dead",
        "_formats",
        "_framer",
        "_frontend",
        "_key",
        "_label",
        "_sid",
        "_startup",
        "_trace",
    )

    def __init__(
        self, trace: ProtocolTrace, sid: int, name: str, direction: str, startup: bool
    ) -> None:
        self._trace = trace
        self._sid = sid
        self._key = (sid, name)
        self._label = f"s={sid} {name}{direction}"
        self._frontend = direction == ">"
        self._startup = StartupFramer() if startup and self._frontend else None
        self._framer = MessageFramer()
        self._formats: tuple[int, ...] = ()  # of the last RowDescription, for DataRow
        self._dead = False

    def __call__(self, data: bytes) -> None:
        if self._dead or not data:
            return
        try:
            self._feed(data)
            self._trace.flush()  # someone is watching the trace as it happens
        except ProtocolViolation as exc:
            self._stop(f"framing failed ({exc}); no longer tracing this leg")
        except Exception as exc:  # a tracer must never break a session
            self._stop(f"tracing failed ({exc!r}); no longer tracing this leg")

    def _stop(self, text: str) -> None:
        self._dead = True
        try:
            if self._trace._accepting(self._sid):
                self._trace._write(self._label, text)
        except Exception:
            pass

    def _emit(self, text: str) -> None:
        if self._trace._accepting(self._sid):
            self._trace._write(self._label, text)

    def _feed(self, data: bytes) -> None:
        trace = self._trace
        while self._startup is not None and data:
            body, data = self._startup.feed(data)
            if body is None:
                return
            self._emit(self._describe_startup(body))  # described even if unwritten: state
        if not self._frontend and self._key in trace._handshakes and not self._framer.buffered:
            kind = trace._handshakes.pop(self._key)
            if data[:1] in (b"S", b"G", b"N"):  # anything else: an ErrorResponse, framed below
                verdict = "refused" if data[:1] == b"N" else "accepted"
                self._emit(f"{kind}Response answer={data[:1].decode()!r} ({verdict})")
                data = data[1:]
        for type_byte, payload in self._framer.feed(data):
            if trace._accepting(self._sid):
                trace._write(self._label, self._describe(type_byte, payload))

    def _describe_startup(self, body: bytes) -> str:
        """Leaves start-up mode unless the packet asks for encryption (a new packet follows)."""
        self._startup = None
        self._trace._handshakes.pop(self._key, None)  # any answer came before this packet
        try:
            packet = f.decode_startup(body)
        except Exception as exc:
            return f"StartupPacket undecodable ({exc}) len={len(body)}"
        if isinstance(packet, f.SSLRequest | f.GSSENCRequest):
            self._startup = StartupFramer()
            kind = "SSL" if isinstance(packet, f.SSLRequest) else "GSSENC"
            self._trace._handshakes[self._key] = kind
            return type(packet).__name__
        if isinstance(packet, f.CancelRequest):
            return f"CancelRequest pid={packet.process_id}"  # the secret key stays out
        assert isinstance(packet, f.StartupMessage)
        params = " ".join(f"{k}={v!r}" for k, v in packet.parameters.items())
        return f"StartupMessage protocol={packet.major}.{packet.minor} {params}"

    def _describe(self, type_byte: int, payload: bytes) -> str:
        cls = (f.FRONTEND_MESSAGES if self._frontend else b.BACKEND_MESSAGES).get(type_byte)
        if cls is None:
            return f"Unknown type={chr(type_byte)!r} len={len(payload)}"
        if cls is f.PasswordMessage or cls is f.CopyData:  # secrets and bulk: never decoded
            return f"{cls.__name__} len={len(payload)}"
        try:
            decode = f.decode_frontend if self._frontend else b.decode_backend
            message = decode(type_byte, payload)
        except Exception as exc:
            return f"{cls.__name__} undecodable ({exc}) len={len(payload)}"
        try:
            return f"{cls.__name__}{self._fields(message)}"
        except Exception as exc:
            return f"{cls.__name__} undescribable ({exc!r}) len={len(payload)}"

    def _sql(self, sql: str) -> str:
        if self._trace.redact:  # analyze() redacts numbers too, which needs the parse tree
            sql = "; ".join(info.redacted for info in analyze(sql))
        return repr(_clip(sql, MAX_SQL_CHARS))

    def _fields(self, m: object) -> str:  # noqa: C901 - one branch per message type
        redact = self._trace.redact
        match m:
            case f.Query():
                return f" sql={self._sql(m.sql)}"
            case f.Parse():
                return f" name={m.name!r} sql={self._sql(m.sql)} types={len(m.parameter_types)}"
            case f.Bind():
                text = f" portal={m.portal!r} statement={m.statement!r} params={len(m.parameters)}"
                if redact or not m.parameters:
                    return text
                values = _values(m.parameters, m.parameter_formats, len(m.parameters))
                return f"{text} values={values}"
            case f.Describe() | f.Close():
                return f" kind={m.kind} name={m.name!r}"
            case f.Execute():
                return f" portal={m.portal!r} max_rows={m.max_rows}"
            case f.FunctionCall():
                return f" oid={m.function_oid} args={len(m.arguments)}"
            case f.CopyFail():
                return f" message={m.message!r}"
            case b.Authentication():
                kind = _AUTH_KINDS.get(m.code, f"code{m.code}")
                if m.code == 10:
                    return f" kind={kind} mechanisms={m.sasl_mechanisms()}"
                return f" kind={kind}" + (f" len={len(m.data)}" if m.code in (11, 12) else "")
            case b.ParameterStatus():
                return f" {m.name}={m.value!r}"
            case b.BackendKeyData():
                return f" pid={m.process_id}"
            case b.ReadyForQuery():
                return f" status={m.status}"
            case b.RowDescription():
                self._formats = tuple(c.format for c in m.columns)
                names = [c.name for c in m.columns[:MAX_NAMES]]
                more = ", ..." if len(m.columns) > MAX_NAMES else ""
                return f" cols={len(m.columns)} names=[{', '.join(map(repr, names))}{more}]"
            case b.DataRow():
                if redact:
                    return f" cols={len(m.values)}"
                formats = self._formats if len(self._formats) == len(m.values) else ()
                return f" cols={len(m.values)} values={_values(m.values, formats, MAX_ROW_VALUES)}"
            case b.CommandComplete():
                return f" tag={m.tag!r}"
            case b.ErrorResponse():  # and NoticeResponse
                return f" severity={m.severity} code={m.sqlstate} message={m.message!r}"
            case b.NotificationResponse():
                payload = f"len={len(m.payload_text)}" if redact else repr(m.payload_text)
                return f" pid={m.process_id} channel={m.channel!r} payload={payload}"
            case b.ParameterDescription():
                return f" types={list(m.type_oids)}"
            case b.CopyInResponse() | b.CopyOutResponse() | b.CopyBothResponse():
                return f" format={m.format} cols={len(m.column_formats)}"
            case b.FunctionCallResponse():
                return f" len={-1 if m.value is None else len(m.value)}"
            case b.NegotiateProtocolVersion():
                return f" newest_minor={m.newest_minor} unrecognized={list(m.unrecognized)}"
        return ""


def session_tap(
    trace: ProtocolTrace,
    session_id: int,
    started: dict[str, list[tuple[str, bytes]]] | None = None,
) -> dict[tuple[str, str], Callable[[bytes], None]]:
    """A tap for ``Session.attach_tap``: one trace leg per leg and direction.
    ``started`` holds each leg's start-up bytes (``"client"``, ``"truth"``,
    ``"target"``: recorded before the session had an id), traced first; their lines
    carry the time they were traced, not the time they crossed the wire."""
    legs = {
        (name, direction): trace.leg(
            session_id, name, direction, startup=direction == ">" and started is not None
        )
        for name in ("client", "truth", "target")
        for direction in (">", "<")
    }
    for name, chunks in (started or {}).items():
        for direction, data in chunks:
            legs[(name, direction)](data)
    return legs


@implementer(ISessionTracer)
class SessionTracer:
    """The protocol trace as the proxy sees it.

    With ``debug.log-protocol`` on, every session (or those whose application_name
    matches ``application``) is traced from its start-up. Otherwise nothing is recorded
    and the file is opened at the first ``TRACE <session>`` of the admin console."""

    def __init__(
        self,
        open_trace: Callable[[frozenset[int] | None], ProtocolTrace],
        all_sessions: bool,
        application: str | None = None,
    ) -> None:
        self._open = open_trace
        self._all = all_sessions
        self._application = re.compile(application) if application else None
        self.trace: ProtocolTrace | None = open_trace(None) if all_sessions else None

    def recording(self) -> bool:
        return self._all

    def start(self, session: Any, application: str, started: dict) -> None:
        trace = self.trace
        session_id = session.session_id
        if trace is None or session_id is None or not trace.wants(session_id):
            return
        if self._application is None or self._application.search(application):
            session.attach_tap(session_tap(trace, session_id, started))

    def trace_running(self, session: Any, on: bool) -> str:
        """Start or stop tracing a running session (from its next message boundary)."""
        session_id = session.session_id
        if self.trace is None:
            self.trace = self._open(frozenset())
        trace = self.trace
        if not on:
            trace.untrace_session(session_id)
            return f"session {session_id} is no longer traced"
        trace.trace_session(session_id)
        if not session.traced:
            session.attach_tap(session_tap(trace, session_id))
        return f"tracing session {session_id} into {trace.path} from its next message"

    def close(self) -> None:
        if self.trace is not None:
            self.trace.close()

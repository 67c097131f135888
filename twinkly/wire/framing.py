"""Finding message boundaries in a byte stream, without decoding the messages.

Most bytes that cross Twinkly are forwarded untouched; the framers only find where each
message starts and ends so that the state machines can look at the few that matter.
Both framers enforce a maximum message length, so a hostile or broken peer cannot make
Twinkly buffer without bound.
"""

from __future__ import annotations

from struct import Struct

from twinkly.wire.accel import split as _split

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MessageFramer",
    "ProtocolViolation",
    "StartupFramer",
]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_UINT32 = Struct("!I")
_unpack_len = _UINT32.unpack_from


class ProtocolViolation(Exception):
    """The peer sent bytes that are not the PostgreSQL protocol; SQLSTATE 08P01."""

    sqlstate = "08P01"


class MessageFramer:
    """Splits a stream of tagged messages (type byte + int32 length + payload).

    ``feed`` returns ``(type, payload)`` pairs for every complete message. A message
    split across reads is kept as a list of chunks until it is complete, so one large
    message costs one join, not one copy per read.
    """

    __slots__ = ("_chunks", "_need", "held", "limit")

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        # Plain attributes, not properties: the trackers read them on every backend read.
        self.limit = max_message_bytes
        self.held = 0  # bytes held for an incomplete message (0: at a message boundary)
        self._chunks: list[bytes] = []
        self._need = 0  # bytes needed to complete the pending message, 0 = unknown

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message."""
        return self.held

    @property
    def pending(self) -> int:
        """Bytes of a message not yet complete (0: the stream is at a message boundary)."""
        return self.held

    def join(self, data: bytes) -> bytes | None:
        """``data`` preceded by any held bytes; None while the held message is still
        incomplete. Callers that walk messages themselves use this with ``hold`` (and
        may skip it while ``held`` is 0: it returns ``data`` itself then)."""
        if not self._chunks:
            return data
        self._chunks.append(data)
        self.held += len(data)
        if self.held < self._need:
            return None
        data = b"".join(self._chunks)
        self._chunks = []
        self.held = 0
        self._need = 0
        return data

    def hold(self, data: bytes, pos: int, need: int) -> None:
        """Keep ``data[pos:]``, the start of a message of ``need`` bytes (5 when even
        its header is incomplete); nothing when ``pos`` is at the end."""
        if pos < len(data):
            rest = data[pos:] if pos else data
            self._chunks = [rest]
            self.held = len(rest)
            self._need = need

    def length_error(self, data: bytes, pos: int, length: int) -> ProtocolViolation:
        return ProtocolViolation(
            f"invalid message length {length} for message type {chr(data[pos])!r}"
            f" (limit {self.limit})"
        )

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Every complete message in the stream so far, as ``(type, payload)``."""
        joined = self.join(data) if self.held else data
        if joined is None:
            return []
        out, pos, need = _split(joined, self.limit)
        if need < 0:
            raise self.length_error(joined, pos, _unpack_len(joined, pos + 1)[0])
        if pos < len(joined):
            self.hold(joined, pos, need)
        return out


class StartupLengthInvalid(ProtocolViolation):
    """A start-up packet whose length is impossible: not a PostgreSQL client (or one
    whose first bytes are not a start-up packet). PostgreSQL logs it and closes the
    connection without a reply, and so does Twinkly: a client such as node-postgres,
    whose Terminate went out before its start-up, must see what a server does."""


class StartupFramer:
    """Frames the untagged start-up phase: int32 length + body, no type byte.

    The first messages of a connection (SSLRequest, GSSENCRequest, StartupMessage,
    CancelRequest) carry no type byte; the PostgreSQL server caps them at 10000 bytes.
    """

    __slots__ = ("_buffer", "_max")

    MAX_STARTUP_BYTES = 10004  # as PostgreSQL: 10,000 bytes after the length word

    def __init__(self, max_message_bytes: int = MAX_STARTUP_BYTES) -> None:
        self._max = max_message_bytes
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[bytes | None, bytes]:
        """Return ``(body, remainder)``: one complete start-up body, or None, and
        the bytes after it (which belong to whatever phase comes next)."""
        self._buffer += data
        if len(self._buffer) < 4:
            return None, b""
        length = _unpack_len(self._buffer, 0)[0]
        if length < 8 or length > self._max:
            raise StartupLengthInvalid(f"invalid length of startup packet: {length}")
        if len(self._buffer) < length:
            return None, b""
        body = self._buffer[4:length]
        rest = self._buffer[length:]
        self._buffer = b""
        return body, rest

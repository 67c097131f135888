"""Reading and writing the primitive types of the PostgreSQL protocol."""

from __future__ import annotations

from struct import Struct
from typing import ClassVar

from twinkly.wire.framing import ProtocolViolation

_INT16 = Struct("!h")
_INT32 = Struct("!i")
_UINT32 = Struct("!I")


class Reader:
    """Consumes a message payload field by field; any overrun is a ProtocolViolation."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, count: int) -> bytes:
        end = self._pos + count
        if count < 0 or end > len(self._data):
            raise ProtocolViolation("message is shorter than its contents")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def byte(self) -> int:
        return self._take(1)[0]

    def int16(self) -> int:
        return _INT16.unpack(self._take(2))[0]

    def int32(self) -> int:
        return _INT32.unpack(self._take(4))[0]

    def uint32(self) -> int:
        return _UINT32.unpack(self._take(4))[0]

    def cstring(self) -> str:
        end = self._data.find(b"\0", self._pos)
        if end < 0:
            raise ProtocolViolation("unterminated string in message")
        value = self._data[self._pos : end]
        self._pos = end + 1
        return value.decode("utf-8", "surrogateescape")

    def bytes_(self, count: int) -> bytes:
        return self._take(count)

    def sized(self) -> bytes | None:
        """An int32 length then that many bytes; -1 means NULL."""
        length = self.int32()
        return None if length == -1 else self._take(length)

    def rest(self) -> bytes:
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk

    def done(self) -> None:
        if self._pos != len(self._data):
            raise ProtocolViolation("message has trailing bytes")


def int16(value: int) -> bytes:
    return _INT16.pack(value)


def int32(value: int) -> bytes:
    return _INT32.pack(value)


def uint32(value: int) -> bytes:
    return _UINT32.pack(value)


def cstring(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape") + b"\0"


def sized(value: bytes | None) -> bytes:
    return int32(-1) if value is None else int32(len(value)) + value


def tagged(type_byte: bytes, payload: bytes) -> bytes:
    """A complete tagged message."""
    return type_byte + uint32(len(payload) + 4) + payload


class NoPayload:
    """Base of the messages that carry nothing but their type byte (Sync, BindComplete...)."""

    __slots__ = ()
    TYPE: ClassVar[bytes]

    def payload(self) -> bytes:
        return b""

    @classmethod
    def read(cls, r: Reader) -> NoPayload:
        r.done()
        return cls()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(self.TYPE)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

"""Messages a client (frontend) sends: typed, with encoders and decoders.

Twinkly forwards client bytes untouched on the hot path; these types are for the start-up
phase, for what Twinkly itself sends to backends, for the protocol trace, and for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from twinkly.wire.buffers import (
    NoPayload,
    Reader,
    cstring,
    int16,
    int32,
    sized,
    tagged,
    uint32,
)
from twinkly.wire.framing import ProtocolViolation

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


# --- the untagged start-up phase ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    parameters: dict[str, str]
    protocol: int = PROTOCOL_3_0

    @property
    def major(self) -> int:
        return self.protocol >> 16

    @property
    def minor(self) -> int:
        return self.protocol & 0xFFFF

    def encode(self) -> bytes:
        body = uint32(self.protocol)
        for key, value in self.parameters.items():
            body += cstring(key) + cstring(value)
        body += b"\0"
        return uint32(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest:
    def encode(self) -> bytes:
        return uint32(8) + uint32(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    def encode(self) -> bytes:
        return uint32(8) + uint32(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: bytes  # 4 bytes in protocol 3.0, up to 256 in 3.2

    def encode(self) -> bytes:
        body = uint32(CANCEL_REQUEST_CODE) + uint32(self.process_id) + self.secret_key
        return uint32(len(body) + 4) + body


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def decode_startup(body: bytes) -> StartupPacket:
    """Decode the body (after the length word) of an untagged start-up packet."""
    reader = Reader(body)
    code = reader.uint32()
    if code == SSL_REQUEST_CODE:
        reader.done()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        reader.done()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        process_id = reader.uint32()
        secret = reader.rest()
        if not 4 <= len(secret) <= 256:
            raise ProtocolViolation("invalid cancel request")
        return CancelRequest(process_id, secret)
    if code >> 16 != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}:"
            " server supports 3.0 to 3.0"
        )
    parameters: dict[str, str] = {}
    while True:
        key = reader.cstring()
        if not key:
            break
        parameters[key] = reader.cstring()
    reader.done()
    if "user" not in parameters:
        raise ProtocolViolation("no PostgreSQL user name specified in startup packet")
    return StartupMessage(parameters, code)


# --- tagged messages ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    TYPE: ClassVar[bytes] = b"Q"
    sql: str

    def payload(self) -> bytes:
        return cstring(self.sql)

    @classmethod
    def read(cls, r: Reader) -> Query:
        return cls(r.cstring())


@dataclass(frozen=True, slots=True)
class Parse:
    TYPE: ClassVar[bytes] = b"P"
    name: str
    sql: str
    parameter_types: tuple[int, ...] = ()

    def payload(self) -> bytes:
        types = b"".join(uint32(oid) for oid in self.parameter_types)
        return cstring(self.name) + cstring(self.sql) + int16(len(self.parameter_types)) + types

    @classmethod
    def read(cls, r: Reader) -> Parse:
        name, sql = r.cstring(), r.cstring()
        return cls(name, sql, tuple(r.uint32() for _ in range(r.int16())))


@dataclass(frozen=True, slots=True)
class Bind:
    TYPE: ClassVar[bytes] = b"B"
    portal: str
    statement: str
    parameter_formats: tuple[int, ...] = ()
    parameters: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def payload(self) -> bytes:
        out = [cstring(self.portal), cstring(self.statement)]
        out.append(int16(len(self.parameter_formats)))
        out.extend(int16(f) for f in self.parameter_formats)
        out.append(int16(len(self.parameters)))
        out.extend(sized(p) for p in self.parameters)
        out.append(int16(len(self.result_formats)))
        out.extend(int16(f) for f in self.result_formats)
        return b"".join(out)

    @classmethod
    def read(cls, r: Reader) -> Bind:
        portal, statement = r.cstring(), r.cstring()
        formats = tuple(r.int16() for _ in range(r.int16()))
        params = tuple(r.sized() for _ in range(r.int16()))
        results = tuple(r.int16() for _ in range(r.int16()))
        return cls(portal, statement, formats, params, results)


@dataclass(frozen=True, slots=True)
class Describe:
    TYPE: ClassVar[bytes] = b"D"
    kind: str  # "S" statement, "P" portal
    name: str = ""

    def payload(self) -> bytes:
        return self.kind.encode() + cstring(self.name)

    @classmethod
    def read(cls, r: Reader) -> Describe:
        return cls(chr(r.byte()), r.cstring())


@dataclass(frozen=True, slots=True)
class Execute:
    TYPE: ClassVar[bytes] = b"E"
    portal: str = ""
    max_rows: int = 0

    def payload(self) -> bytes:
        return cstring(self.portal) + int32(self.max_rows)

    @classmethod
    def read(cls, r: Reader) -> Execute:
        return cls(r.cstring(), r.int32())


@dataclass(frozen=True, slots=True)
class Close:
    TYPE: ClassVar[bytes] = b"C"
    kind: str  # "S" or "P"
    name: str = ""

    def payload(self) -> bytes:
        return self.kind.encode() + cstring(self.name)

    @classmethod
    def read(cls, r: Reader) -> Close:
        return cls(chr(r.byte()), r.cstring())


@dataclass(frozen=True, slots=True)
class FunctionCall:
    TYPE: ClassVar[bytes] = b"F"
    function_oid: int
    argument_formats: tuple[int, ...] = ()
    arguments: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def payload(self) -> bytes:
        out = [uint32(self.function_oid), int16(len(self.argument_formats))]
        out.extend(int16(f) for f in self.argument_formats)
        out.append(int16(len(self.arguments)))
        out.extend(sized(a) for a in self.arguments)
        out.append(int16(self.result_format))
        return b"".join(out)

    @classmethod
    def read(cls, r: Reader) -> FunctionCall:
        oid = r.uint32()
        formats = tuple(r.int16() for _ in range(r.int16()))
        args = tuple(r.sized() for _ in range(r.int16()))
        return cls(oid, formats, args, r.int16())


@dataclass(frozen=True, slots=True)
class CopyFail:
    TYPE: ClassVar[bytes] = b"f"
    message: str

    def payload(self) -> bytes:
        return cstring(self.message)

    @classmethod
    def read(cls, r: Reader) -> CopyFail:
        return cls(r.cstring())


@dataclass(frozen=True, slots=True)
class CopyData:
    TYPE: ClassVar[bytes] = b"d"
    data: bytes

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def read(cls, r: Reader) -> CopyData:
        return cls(r.rest())


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """'p': a password, SASLInitialResponse or SASLResponse; which one depends on state."""

    TYPE: ClassVar[bytes] = b"p"
    data: bytes = field(default=b"")

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def read(cls, r: Reader) -> PasswordMessage:
        return cls(r.rest())

    @classmethod
    def cleartext(cls, password: str) -> PasswordMessage:
        return cls(cstring(password))

    @classmethod
    def sasl_initial(cls, mechanism: str, data: bytes) -> PasswordMessage:
        return cls(cstring(mechanism) + sized(data))

    def parse_sasl_initial(self) -> tuple[str, bytes]:
        r = Reader(self.data)
        mechanism = r.cstring()
        return mechanism, r.sized() or b""

    def parse_cleartext(self) -> str:
        r = Reader(self.data)
        value = r.cstring()
        r.done()
        return value


class Sync(NoPayload):
    TYPE = b"S"


class Flush(NoPayload):
    TYPE = b"H"


class CopyDone(NoPayload):
    TYPE = b"c"


class Terminate(NoPayload):
    TYPE = b"X"


FRONTEND_MESSAGES: dict[int, Any] = {  # message classes, each with a read()
    cls.TYPE[0]: cls
    for cls in (
        Query,
        Parse,
        Bind,
        Describe,
        Execute,
        Close,
        Sync,
        Flush,
        FunctionCall,
        CopyData,
        CopyDone,
        CopyFail,
        PasswordMessage,
        Terminate,
    )
}


def encode(message: object) -> bytes:
    """A tagged frontend or backend message as bytes on the wire."""
    return tagged(message.TYPE, message.payload())  # type: ignore[attr-defined]


def decode_frontend(type_byte: int, payload: bytes) -> object:
    cls = FRONTEND_MESSAGES.get(type_byte)
    if cls is None:
        raise ProtocolViolation(f"invalid frontend message type {type_byte}")
    reader = Reader(payload)
    message = cls.read(reader)
    reader.done()
    return message

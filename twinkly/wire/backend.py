"""Messages a server (backend) sends: typed, with encoders and decoders.

Twinkly decodes backend messages only where a decision needs them (authentication,
start-up parameters, errors, command tags); rows pass through as raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from twinkly.wire.buffers import NoPayload, Reader, cstring, int16, int32, sized, uint32
from twinkly.wire.framing import ProtocolViolation
from twinkly.wire.frontend import CopyData, CopyDone  # the same message both ways

# Authentication request codes.
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


@dataclass(frozen=True, slots=True)
class Authentication:
    TYPE: ClassVar[bytes] = b"R"
    code: int
    data: bytes = b""

    def payload(self) -> bytes:
        return int32(self.code) + self.data

    @classmethod
    def read(cls, r: Reader) -> Authentication:
        return cls(r.int32(), r.rest())

    @classmethod
    def sasl(cls, mechanisms: list[str]) -> Authentication:
        return cls(AUTH_SASL, b"".join(cstring(m) for m in mechanisms) + b"\0")

    def sasl_mechanisms(self) -> list[str]:
        return [m.decode() for m in self.data.split(b"\0") if m]


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    TYPE: ClassVar[bytes] = b"S"
    name: str
    value: str

    def payload(self) -> bytes:
        return cstring(self.name) + cstring(self.value)

    @classmethod
    def read(cls, r: Reader) -> ParameterStatus:
        return cls(r.cstring(), r.cstring())


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    TYPE: ClassVar[bytes] = b"K"
    process_id: int
    secret_key: bytes

    def payload(self) -> bytes:
        return uint32(self.process_id) + self.secret_key

    @classmethod
    def read(cls, r: Reader) -> BackendKeyData:
        return cls(r.uint32(), r.rest())


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    TYPE: ClassVar[bytes] = b"Z"
    status: str  # "I" idle, "T" in a transaction, "E" in a failed transaction

    def payload(self) -> bytes:
        return self.status.encode()

    @classmethod
    def read(cls, r: Reader) -> ReadyForQuery:
        return cls(chr(r.byte()))


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    table_oid: int = 0
    column_number: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


@dataclass(frozen=True, slots=True)
class RowDescription:
    TYPE: ClassVar[bytes] = b"T"
    columns: tuple[Column, ...]

    def payload(self) -> bytes:
        out = [int16(len(self.columns))]
        for c in self.columns:
            out.append(cstring(c.name) + uint32(c.table_oid) + int16(c.column_number))
            out.append(uint32(c.type_oid) + int16(c.type_size) + int32(c.type_modifier))
            out.append(int16(c.format))
        return b"".join(out)

    @classmethod
    def read(cls, r: Reader) -> RowDescription:
        columns = []
        for _ in range(r.int16()):
            name = r.cstring()
            columns.append(
                Column(name, r.uint32(), r.int16(), r.uint32(), r.int16(), r.int32(), r.int16())
            )
        return cls(tuple(columns))


@dataclass(frozen=True, slots=True)
class DataRow:
    TYPE: ClassVar[bytes] = b"D"
    values: tuple[bytes | None, ...]

    def payload(self) -> bytes:
        return int16(len(self.values)) + b"".join(sized(v) for v in self.values)

    @classmethod
    def read(cls, r: Reader) -> DataRow:
        return cls(tuple(r.sized() for _ in range(r.int16())))


@dataclass(frozen=True, slots=True)
class CommandComplete:
    TYPE: ClassVar[bytes] = b"C"
    tag: str

    def payload(self) -> bytes:
        return cstring(self.tag)

    @classmethod
    def read(cls, r: Reader) -> CommandComplete:
        return cls(r.cstring())


# Field codes of ErrorResponse and NoticeResponse.
FIELD_NAMES = {
    "S": "severity_local",
    "V": "severity",
    "C": "sqlstate",
    "M": "message",
    "D": "detail",
    "H": "hint",
    "P": "position",
    "p": "internal_position",
    "q": "internal_query",
    "W": "where",
    "s": "schema",
    "t": "table",
    "c": "column",
    "d": "data_type",
    "n": "constraint",
    "F": "file",
    "L": "line",
    "R": "routine",
}


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    TYPE: ClassVar[bytes] = b"E"
    fields: dict[str, str]

    @classmethod
    def make(
        cls, severity: str, sqlstate: str, message: str, detail: str | None = None
    ) -> ErrorResponse:
        fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
        if detail:
            fields["D"] = detail
        return cls(fields)

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def severity(self) -> str:
        return self.fields.get("V") or self.fields.get("S", "")

    def payload(self) -> bytes:
        return b"".join(k.encode() + cstring(v) for k, v in self.fields.items()) + b"\0"

    @classmethod
    def read(cls, r: Reader) -> ErrorResponse:
        fields: dict[str, str] = {}
        while (code := r.byte()) != 0:
            fields[chr(code)] = r.cstring()
        return cls(fields)


@dataclass(frozen=True, slots=True)
class NoticeResponse(ErrorResponse):
    TYPE: ClassVar[bytes] = b"N"


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    TYPE: ClassVar[bytes] = b"A"
    process_id: int
    channel: str
    payload_text: str

    def payload(self) -> bytes:
        return uint32(self.process_id) + cstring(self.channel) + cstring(self.payload_text)

    @classmethod
    def read(cls, r: Reader) -> NotificationResponse:
        return cls(r.uint32(), r.cstring(), r.cstring())


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    TYPE: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...]

    def payload(self) -> bytes:
        return int16(len(self.type_oids)) + b"".join(uint32(o) for o in self.type_oids)

    @classmethod
    def read(cls, r: Reader) -> ParameterDescription:
        return cls(tuple(r.uint32() for _ in range(r.int16())))


@dataclass(frozen=True, slots=True)
class _CopyResponse:
    TYPE: ClassVar[bytes]
    format: int
    column_formats: tuple[int, ...]

    def payload(self) -> bytes:
        formats = b"".join(int16(f) for f in self.column_formats)
        return bytes([self.format]) + int16(len(self.column_formats)) + formats

    @classmethod
    def read(cls, r: Reader) -> _CopyResponse:
        fmt = r.byte()
        return cls(fmt, tuple(r.int16() for _ in range(r.int16())))


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"G"


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"W"


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    TYPE: ClassVar[bytes] = b"V"
    value: bytes | None

    def payload(self) -> bytes:
        return sized(self.value)

    @classmethod
    def read(cls, r: Reader) -> FunctionCallResponse:
        return cls(r.sized())


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    TYPE: ClassVar[bytes] = b"v"
    newest_minor: int
    unrecognized: tuple[str, ...] = ()

    def payload(self) -> bytes:
        names = b"".join(cstring(n) for n in self.unrecognized)
        return int32(self.newest_minor) + int32(len(self.unrecognized)) + names

    @classmethod
    def read(cls, r: Reader) -> NegotiateProtocolVersion:
        minor = r.int32()
        return cls(minor, tuple(r.cstring() for _ in range(r.int32())))


class ParseComplete(NoPayload):
    TYPE = b"1"


class BindComplete(NoPayload):
    TYPE = b"2"


class CloseComplete(NoPayload):
    TYPE = b"3"


class NoData(NoPayload):
    TYPE = b"n"


class PortalSuspended(NoPayload):
    TYPE = b"s"


class EmptyQueryResponse(NoPayload):
    TYPE = b"I"


BACKEND_MESSAGES: dict[int, Any] = {  # message classes, each with a read()
    cls.TYPE[0]: cls
    for cls in (
        Authentication,
        ParameterStatus,
        BackendKeyData,
        ReadyForQuery,
        RowDescription,
        DataRow,
        CommandComplete,
        ErrorResponse,
        NoticeResponse,
        NotificationResponse,
        ParameterDescription,
        CopyInResponse,
        CopyOutResponse,
        CopyBothResponse,
        FunctionCallResponse,
        NegotiateProtocolVersion,
        CopyData,
        ParseComplete,
        BindComplete,
        CloseComplete,
        NoData,
        PortalSuspended,
        EmptyQueryResponse,
        CopyDone,
    )
}


def decode_backend(type_byte: int, payload: bytes) -> object:
    cls = BACKEND_MESSAGES.get(type_byte)
    if cls is None:
        raise ProtocolViolation(f"invalid backend message type {type_byte}")
    reader = Reader(payload)
    message = cls.read(reader)
    reader.done()
    return message


def error_fields(payload: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse payload."""
    return ErrorResponse.read(Reader(payload)).fields

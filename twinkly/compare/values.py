"""Type-aware normalisation of field values, so that equal answers compare equal.

Two servers can print the same value differently: float text changed in PostgreSQL 12,
``numeric`` keeps its scale, ``timestamptz`` is printed in the session's zone, ``jsonb``
key order and ``json`` spacing vary. ``normalize`` turns one field (raw bytes, by type OID
and format) into a hashable canonical value; floats become a ``FloatValue`` whose ``==``
applies the relative tolerance. Anything that does not parse for its type is compared as
exact bytes: this module never raises on data.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from struct import Struct
from struct import error as StructError

from twinkly.wire.backend import Column, RowDescription
from twinkly.wire.buffers import Reader


@dataclass(frozen=True)
class NormalizationRules:
    float_tolerance: float = 1e-9  # relative, for float4/float8 and their arrays; 0 = exact text
    numeric_scale: bool = True  # numeric 1.50 == 1.5 (compare the value, not the scale)
    timestamptz_as_instant: bool = True  # any zone / ISO, Postgres or German DateStyle -> UTC
    jsonb_key_order: bool = True  # json/jsonb objects compare by content, not by text
    # everything else: exact bytes


DEFAULT_RULES = NormalizationRules()

#: Array type OID -> element type OID (text format arrays are parsed element by element).
ARRAY_ELEMENTS = {
    1000: 16, 1005: 21, 1007: 23, 1016: 20, 1021: 700, 1022: 701, 1009: 25, 1015: 1043,
    1014: 1042, 1231: 1700, 1182: 1082, 1115: 1114, 1185: 1184, 2951: 2950, 199: 114,
    3807: 3802,
}  # fmt: skip
TYPE_NAMES = {
    16: "bool", 17: "bytea", 19: "name", 20: "int8", 21: "int2", 23: "int4", 25: "text",
    26: "oid", 114: "json", 700: "float4", 701: "float8", 1042: "bpchar", 1043: "varchar",
    1082: "date", 1083: "time", 1114: "timestamp", 1184: "timestamptz", 1186: "interval",
    1700: "numeric", 2950: "uuid", 3802: "jsonb",
}  # fmt: skip
TYPE_NAMES.update({oid: TYPE_NAMES[element] + "[]" for oid, element in ARRAY_ELEMENTS.items()})
FLOAT_TYPES = frozenset((700, 701, 1021, 1022))

_INT64_MAX = (1 << 63) - 1  # PostgreSQL's +infinity for timestamps
_INT64_MIN = -(1 << 63)
_INT32_MAX = (1 << 31) - 1  # ... and for dates
_INT32_MIN = -(1 << 31)
_EPOCH = datetime(2000, 1, 1)  # of PostgreSQL's binary dates and timestamps
_EPOCH_UTC = _EPOCH.replace(tzinfo=UTC)


class FloatValue:
    """A float that equals another within a relative tolerance; NaN equals NaN.

    The hash is that of the value rounded to a few digits fewer than the tolerance: a
    bucket hint only (near values usually share it); ``==`` is the authority.
    """

    __slots__ = ("tolerance", "value")

    def __init__(self, value: float, tolerance: float) -> None:
        self.value = value
        self.tolerance = tolerance

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FloatValue):
            return NotImplemented
        a, b = self.value, other.value
        if a == b:
            return True
        if a != a or b != b:
            return a != a and b != b
        if math.isinf(a) or math.isinf(b):
            return False
        return abs(a - b) <= max(self.tolerance, other.tolerance) * max(abs(a), abs(b))

    def __hash__(self) -> int:
        return hash(float_key(self.value, _digits(self.tolerance)))

    def __repr__(self) -> str:
        return f"FloatValue({self.value!r})"


@dataclass(frozen=True, slots=True)
class Unparsed:
    """A value that did not parse for its type: equal only to the very same bytes."""

    raw: bytes


# --- decoding the messages ----------------------------------------------------------

_I16 = Struct("!h").unpack_from
_I32 = Struct("!i").unpack_from


def decode_columns(row_description_payload: bytes) -> tuple[Column, ...]:
    """The columns of a RowDescription payload (as kept in ``StatementResult.columns``)."""
    return RowDescription.read(Reader(row_description_payload)).columns


def decode_row(data_row_payload: bytes) -> tuple[bytes | None, ...]:
    """The fields of a DataRow payload; ValueError if it is malformed."""
    payload = data_row_payload
    try:
        count = _I16(payload, 0)[0]
        pos = 2
        values: list[bytes | None] = []
        append = values.append
        for _ in range(count):
            length = _I32(payload, pos)[0]
            pos += 4
            if length < 0:
                append(None)
            else:
                end = pos + length
                append(payload[pos:end])
                pos = end
    except StructError as e:
        raise ValueError("malformed DataRow") from e
    if pos != len(payload):
        raise ValueError("malformed DataRow")
    return tuple(values)


# --- parsers: bytes -> canonical value (they may raise: normalize falls back) ----------

Parser = Callable[[bytes, float], object]  # (field, float tolerance) -> canonical value
_F32, _F64 = Struct(">f"), Struct(">d")
_INTERVAL_BIN = Struct(">qii")
_BYTEA_ESCAPE = re.compile(rb"\\\\|\\[0-3][0-7][0-7]")
_INFINITE = {b"infinity": 1, b"-infinity": -1}
_DATE = re.compile(rb"(\d{4,})-(\d\d)-(\d\d)( BC)?")
_CLOCK = rb"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
_TIME = re.compile(_CLOCK)
_TS_ISO = re.compile(rb"(\d{4,})-(\d\d)-(\d\d)[ T]" + _CLOCK + rb"(?:(?<=\d)([+-]\S+))?( BC)?")
_TS_POSTGRES = re.compile(  # Mon Jan 01 12:00:00 2024 UTC (MDY), Mon 01 Jan ... (DMY)
    rb"[A-Z][a-z]{2} (?:([A-Z][a-z]{2}) (\d\d)|(\d\d) ([A-Z][a-z]{2})) "
    + _CLOCK
    + rb" (\d{4,})(?: (?!BC$)([^ ]+))?( BC)?"
)
_TS_GERMAN = re.compile(rb"(\d\d)\.(\d\d)\.(\d{4,}) " + _CLOCK + rb"(?: (?!BC$)([^ ]+))?( BC)?")
_MONTHS = {
    m: i + 1 for i, m in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())
}
_ZONE = re.compile(rb"([+-])(\d\d)(?::?(\d\d))?(?::?(\d\d))?")
_UTC_NAMES = frozenset((b"UTC", b"GMT", b"UT", b"Z"))
_INTERVAL_PG = re.compile(
    rb"(?:([+-]?\d+) years? ?)?(?:([+-]?\d+) mons? ?)?(?:([+-]?\d+) days? ?)?"
    rb"(?:([+-]?)(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?)?"
)
_INTERVAL_ISO = re.compile(
    rb"P(?:([+-]?\d+)Y)?(?:([+-]?\d+)M)?(?:([+-]?\d+)D)?"
    rb"(?:T(?:([+-]?\d+)H)?(?:([+-]?\d+)M)?(?:([+-]?)(\d+)(?:\.(\d{1,6}))?S)?)?"
)


def _float_text(v: bytes, tol: float) -> object:
    return FloatValue(float(v), tol)


def _float4_text(v: bytes, tol: float) -> object:
    # The float4 the text denotes: 3.14159274 (9 digits) and 3.1415927 (shortest) agree.
    return FloatValue(_F32.unpack(_F32.pack(float(v)))[0], tol)


def _numeric_text(v: bytes, tol: float) -> object:
    d = Decimal(v.decode("ascii"))
    return "NaN" if d.is_nan() else d  # a Decimal NaN is unequal to itself


def _bytea_text(v: bytes, tol: float) -> object:
    if v[:2] == b"\\x":
        return bytes.fromhex(v[2:].decode("ascii"))
    if b"\\" in _BYTEA_ESCAPE.sub(b"", v):  # bytea_output = escape
        raise ValueError("bad bytea escape")
    return _BYTEA_ESCAPE.sub(lambda m: b"\\" if m[0] == b"\\\\" else bytes((int(m[0][1:], 8),)), v)


def _fullmatch(pattern: re.Pattern[bytes], v: bytes) -> re.Match[bytes]:
    """The match of all of ``v``; a ValueError (so: compared as exact bytes) when none."""
    m = pattern.fullmatch(v)
    if m is None:
        raise ValueError(f"not {pattern.pattern!r}")
    return m


def _days(year: int, month: int, day: int) -> int:
    """Days from 2000-01-01, proleptic Gregorian, any year (0 = 1 BC), like PostgreSQL."""
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise ValueError("bad date")
    year -= month <= 2
    era, yoe = divmod(year, 400)
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 730425


def _date_text(v: bytes, tol: float) -> object:
    if v in _INFINITE:
        return _INT32_MAX if _INFINITE[v] > 0 else _INT32_MIN
    m = _fullmatch(_DATE, v)
    return _days(1 - int(m[1]) if m[4] else int(m[1]), int(m[2]), int(m[3]))


def _zone_seconds(zone: bytes) -> int:
    if zone in _UTC_NAMES:
        return 0
    m = _fullmatch(_ZONE, zone)  # abbreviations such as EST are ambiguous: no match, exact
    seconds = int(m[2]) * 3600 + int(m[3] or 0) * 60 + int(m[4] or 0)
    return -seconds if m[1] == b"-" else seconds


def _timestamp(v: bytes, with_zone: bool) -> int:
    """Microseconds since 2000-01-01 (UTC when ``with_zone``), as in the binary format."""
    if v in _INFINITE:
        return _INT64_MAX if _INFINITE[v] > 0 else _INT64_MIN
    try:  # the fast path, for ISO years 1 to 9999
        parsed = datetime.fromisoformat(v.decode("ascii"))
    except ValueError:
        pass
    else:
        if (parsed.tzinfo is not None) == with_zone:
            delta = parsed - (_EPOCH_UTC if with_zone else _EPOCH)
            return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    if (m := _TS_ISO.fullmatch(v)) is not None:
        year, month, day, clock, zone, bc = m[1], int(m[2]), m[3], m.groups()[3:7], m[8], m[9]
    elif (m := _TS_POSTGRES.fullmatch(v)) is not None:
        month = _MONTHS[m[1] or m[4]]
        year, day, clock, zone, bc = m[9], m[2] or m[3], m.groups()[4:8], m[10], m[11]
    else:  # German, or no match (ValueError: exact comparison)
        m = _fullmatch(_TS_GERMAN, v)
        year, month, day, clock, zone, bc = m[3], int(m[2]), m[1], m.groups()[3:7], m[8], m[9]
    if (zone is not None) != with_zone:
        raise ValueError("zone missing or unexpected")
    seconds = _days(1 - int(year) if bc else int(year), month, int(day)) * 86400
    seconds += int(clock[0]) * 3600 + int(clock[1]) * 60 + int(clock[2])
    if zone is not None:
        seconds -= _zone_seconds(zone)
    return seconds * 1_000_000 + (int(clock[3].ljust(6, b"0")) if clock[3] else 0)


def _time_text(v: bytes, tol: float) -> object:
    m = _fullmatch(_TIME, v)
    frac = int(m[4].ljust(6, b"0")) if m[4] else 0
    return ((int(m[1]) * 60 + int(m[2])) * 60 + int(m[3])) * 1_000_000 + frac


def _interval_text(v: bytes, tol: float) -> object:
    """(months, days, microseconds) from IntervalStyle postgres or iso_8601 output."""
    m = _INTERVAL_PG.fullmatch(v) if v and not v.endswith(b" ") else None
    carried = 0  # iso_8601 hours and minutes carry their own signs
    if m is not None:
        years, months, days, sign, hours, minutes, seconds, frac = m.groups()
    else:
        m = _fullmatch(_INTERVAL_ISO, v)
        years, months, days, iso_hours, iso_minutes, sign, seconds, frac = m.groups()
        hours = minutes = None
        carried = (int(iso_hours or 0) * 60 + int(iso_minutes or 0)) * 60_000_000
    micros = (int(hours or 0) * 3600 + int(minutes or 0) * 60 + int(seconds or 0)) * 1_000_000
    micros += int(frac.ljust(6, b"0")) if frac else 0
    return (int(years or 0) * 12 + int(months or 0), int(days or 0), carried + (
        -micros if sign == b"-" else micros))  # fmt: skip


def _uuid(raw: bytes) -> bytes:
    if len(raw) != 16:
        raise ValueError("bad uuid")
    return raw


class _JsonObject(list):
    """An object as parsed, before it is made canonical."""


_JSON_CONSTANTS = {True: ("json", True), False: ("json", False), None: ("json", None)}


def _json_canonical(node: object) -> object:
    if isinstance(node, _JsonObject):  # keys unordered; json's duplicate keys kept in order
        pairs = sorted(node, key=lambda pair: pair[0])
        return ("{", tuple((k, _json_canonical(x)) for k, x in pairs))
    if isinstance(node, list):
        return ("[", tuple(_json_canonical(x) for x in node))
    if node is None or node is True or node is False:
        return _JSON_CONSTANTS[node]  # distinct from 1, 0 and strings
    return node  # str, int, Decimal


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _json_text(v: bytes, tol: float) -> object:
    return _json_canonical(
        json.loads(
            v, object_pairs_hook=_JsonObject, parse_float=Decimal, parse_constant=_no_constant
        )
    )


def _jsonb_binary(v: bytes, tol: float) -> object:
    if v[:1] != b"\x01":
        raise ValueError("unknown jsonb binary version")
    return _json_text(v[1:], tol)


_ARRAY_TOKEN = re.compile(
    r'\s*(?:(\{)|(\})|(,)|"((?:[^"\\]|\\.)*)"|([^{},"\s][^{},"]*))', re.DOTALL
)
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


def _parse_array(text: str) -> tuple[str, tuple]:
    """A PostgreSQL array literal -> (dimension decoration, nested tuples of str | None)."""
    decoration, pos = "", 0
    if text.startswith("["):  # [0:1]={1,2}: lower bounds other than 1
        pos = text.index("=") + 1
        decoration = text[:pos]
    stack: list[list] = [[]]
    while pos < len(text):
        m = _ARRAY_TOKEN.match(text, pos)
        if m is None:
            raise ValueError("not an array")
        pos = m.end()
        opened, closed, _, quoted, bare = m.groups()
        if opened:
            stack.append([])
        elif closed:
            done = tuple(stack.pop())
            stack[-1].append(done)  # IndexError when unbalanced
        elif quoted is not None:
            stack[-1].append(_ESCAPED.sub(r"\1", quoted))
        elif bare is not None:
            bare = bare.rstrip()
            stack[-1].append(None if bare.upper() == "NULL" else bare)
    ((result,),) = stack  # exactly one array, and nothing around it
    if type(result) is not tuple:
        raise ValueError("not an array")
    return decoration, result


def _array_text(element_oid: int) -> Parser:
    def parse(v: bytes, tol: float) -> object:
        element = _TEXT.get(element_oid)
        if element in (_float_text, _float4_text) and tol <= 0:
            element = None  # exact floats: the element text as printed

        def walk(items: tuple) -> tuple:
            return tuple(
                walk(x) if type(x) is tuple else x if x is None or element is None
                else element(x.encode(), tol)
                for x in items
            )  # fmt: skip

        decoration, nested = _parse_array(v.decode("utf-8"))
        return (decoration, walk(nested))

    return parse


def _unpack(s: Struct) -> Parser:
    return lambda v, tol: s.unpack(v)[0]


def _float_binary(s: Struct) -> Parser:
    return lambda v, tol: FloatValue(s.unpack(v)[0], tol)


def _interval_binary(v: bytes, tol: float) -> object:
    micros, days, months = _INTERVAL_BIN.unpack(v)
    return (months, days, micros)


# Not listed, so compared as exact bytes: text 25, varchar 1043, bpchar 1042, name 19, ...
_TEXT: dict[int, Parser] = {
    16: lambda v, tol: {b"t": True, b"f": False}[v],
    21: lambda v, tol: int(v), 23: lambda v, tol: int(v), 20: lambda v, tol: int(v),
    26: lambda v, tol: int(v), 700: _float4_text, 701: _float_text, 1700: _numeric_text,
    17: _bytea_text, 1082: _date_text, 1083: _time_text, 1186: _interval_text,
    1114: lambda v, tol: _timestamp(v, False), 1184: lambda v, tol: _timestamp(v, True),
    2950: lambda v, tol: _uuid(bytes.fromhex(v.decode("ascii").replace("-", ""))),
    114: _json_text, 3802: _json_text,
}  # fmt: skip
_TEXT.update({oid: _array_text(element) for oid, element in ARRAY_ELEMENTS.items()})
_BINARY: dict[int, Parser] = {
    21: _unpack(Struct(">h")), 23: _unpack(Struct(">i")), 20: _unpack(Struct(">q")),
    26: _unpack(Struct(">I")), 1082: _unpack(Struct(">i")), 1083: _unpack(Struct(">q")),
    1114: _unpack(Struct(">q")), 1184: _unpack(Struct(">q")),  # timestamptz: UTC already
    16: lambda v, tol: {b"\x01": True, b"\x00": False}[v], 17: lambda v, tol: bytes(v),
    700: _float_binary(_F32), 701: _float_binary(_F64), 2950: lambda v, tol: _uuid(bytes(v)),
    1186: _interval_binary, 114: _json_text, 3802: _jsonb_binary,
}  # fmt: skip


@lru_cache(maxsize=32)
def _exact_types(rules: NormalizationRules) -> frozenset[int]:
    """The type OIDs that these rules compare as exact bytes although a parser exists
    (float arrays keep their elements as text: see _array_text)."""
    switched_off = (
        (rules.float_tolerance <= 0, (700, 701)),
        (not rules.numeric_scale, (1700, 1231)),
        (not rules.timestamptz_as_instant, (1184, 1185)),
        (not rules.jsonb_key_order, (114, 3802, 199, 3807)),
    )
    return frozenset(oid for off, oids in switched_off if off for oid in oids)


# --- the API -------------------------------------------------------------------------


def normalize(
    value: bytes | None, type_oid: int, fmt: int, rules: NormalizationRules = DEFAULT_RULES
) -> object:
    """The hashable canonical form of one field (``FloatValue`` for floats); never raises."""
    if value is None:
        return None
    parser = (_BINARY if fmt == 1 else _TEXT).get(type_oid)
    if parser is None or type_oid in _exact_types(rules):
        return value
    try:
        return parser(value, rules.float_tolerance)
    except Exception:
        return Unparsed(value)


def values_equal(
    a: bytes | None,
    b: bytes | None,
    type_oid: int,
    fmt: int,
    rules: NormalizationRules = DEFAULT_RULES,
) -> bool:
    if a == b:
        return True
    return normalize(a, type_oid, fmt, rules) == normalize(b, type_oid, fmt, rules)


def row_normalizer(
    columns: Sequence[Column], rules: NormalizationRules = DEFAULT_RULES
) -> Callable[[Sequence[bytes | None]], tuple]:
    """A function normalising whole rows of these columns: the parsers are looked up once.
    Fields past the described columns stay bytes."""
    exact, tol = _exact_types(rules), rules.float_tolerance
    active = [
        (k, parser)
        for k, c in enumerate(columns)
        if c.type_oid not in exact
        and (parser := (_BINARY if c.format == 1 else _TEXT).get(c.type_oid)) is not None
    ]

    def normalize_values(values: Sequence[bytes | None]) -> tuple:
        out: list[object] = list(values)
        width = len(out)
        for k, parser in active:
            if k < width and (v := values[k]) is not None:
                try:
                    out[k] = parser(v, tol)
                except Exception:
                    out[k] = Unparsed(v)
        return tuple(out)

    return normalize_values


def normalize_row(
    values: Sequence[bytes | None],
    columns: Sequence[Column],
    rules: NormalizationRules = DEFAULT_RULES,
) -> tuple:
    """Each field normalised by its column (see ``row_normalizer`` for many rows)."""
    return row_normalizer(columns, rules)(values)


@lru_cache(maxsize=64)
def _digits(tolerance: float) -> int:
    """Significant digits kept by bucket keys: fewer than the tolerance resolves."""
    if tolerance <= 0:
        return 17
    return max(1, min(16, math.floor(-math.log10(tolerance)) - 1))


def float_key(x: float, digits: int, shifted: bool = False) -> object:
    """``x`` rounded to ``digits`` significant digits (truncated when ``shifted``: a grid
    offset by half a cell, so two near values share a cell in one grid or the other)."""
    if x == 0:
        return "0"
    if x != x:
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if not shifted:
        return f"{x:.{digits - 1}e}"
    mantissa, _, exponent = f"{x:.{digits + 1}e}".partition("e")
    return mantissa[:-2] + "e" + exponent


def _freeze(value: object, digits: int, shifted: bool) -> object:
    if type(value) is FloatValue:
        return float_key(value.value, digits, shifted)
    if type(value) is tuple:
        return tuple(_freeze(x, digits, shifted) for x in value)
    return value


def float_columns(columns: Sequence[Column], rules: NormalizationRules) -> tuple[int, ...]:
    """Indices of the columns whose canonical values may hold a FloatValue."""
    if rules.float_tolerance <= 0:
        return ()
    return tuple(i for i, c in enumerate(columns) if c.type_oid in FLOAT_TYPES)


def key_of(
    normalized: tuple,
    float_indices: Sequence[int],
    rules: NormalizationRules = DEFAULT_RULES,
    shifted: bool = False,
) -> tuple:
    """A hashable bucket key for a normalised row: floats rounded, all else as is."""
    if not float_indices:
        return normalized
    digits = _digits(rules.float_tolerance)
    key = list(normalized)
    for i in float_indices:
        if i < len(key):
            key[i] = _freeze(key[i], digits, shifted)
    return tuple(key)


def row_key(
    values: Sequence[bytes | None],
    columns: Sequence[Column],
    rules: NormalizationRules = DEFAULT_RULES,
) -> tuple:
    """A hashable canonical form of a whole row, for multiset matching. Near-equal floats
    usually share a key; confirm a match with ``values_equal`` (or ``==`` on
    ``normalize_row``)."""
    return key_of(normalize_row(values, columns, rules), float_columns(columns, rules), rules)

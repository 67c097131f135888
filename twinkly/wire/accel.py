"""The hot path's per-message and per-row work, in C when the extension was built.

These functions and one type, with one meaning whichever implementation runs:

- ``split(data, limit) -> (messages, pos, need)``: every complete tagged message of
  ``data`` as ``(type, payload)``; ``pos`` is where the first incomplete message starts
  and ``need`` how many bytes that message needs (5 while even its header is incomplete),
  or -1 when the message at ``pos`` has a length below 4 or above ``limit``.
- ``scan_rows(data, pos, limit, sample, room) -> (pos, rows, digest, room)``: counts and
  digests the complete DataRow (``D``) and CopyData (``d``) messages from ``pos`` on, up
  to the first other message, incomplete message or invalid length. A row's digest is
  ``hash()`` of its bytes; ``digest`` is their sum modulo 2**64 (order-independent). While
  ``room > 0`` each row's bytes are appended to the list ``sample``; a row that comes when
  ``room == 0`` makes it -1 (the caller drops the sample); ``room < 0`` keeps nothing.
- ``bucket_of(seconds) -> int``: the latency histogram bucket (8 per doubling of
  microseconds; 0 up to 1 microsecond).
- ``blank_literals(sql) -> str``: ``re.sub(r"'[^']*'|\\b\\d+\\b", "0", sql)``.
- ``statement_shape(sql) -> str``: the fingerprint cache's key: ``sql`` itself when it
  holds ``"``, ``$``, ``\\``, ``--`` or ``/*`` (a digit or a quote there might not be a
  literal), else ``blank_literals(sql)``.
- ``Histogram``: a latency histogram's bucket counts (``add(index, seconds)``,
  ``record(seconds)``, ``quantile(q)``, ``buckets`` as a dict, ``count``, ``total``,
  ``max``); bucket indexes run from 0 to ``MAX_BUCKETS - 1``.
- ``record_pair(truth_fp, target_fp, truth_all, target_all, truth, target)``: one
  execution's two timings into four histograms (its fingerprint's and the totals).

``IMPLEMENTATION`` says which one was loaded: ``"c"`` (``twinkly.wire._accel``, built by
setup.py when a compiler was there) or ``"python"`` (no extension, or the environment
variable ``TWINKLY_PURE_PYTHON=1``). ``PYTHON`` and ``C`` (None when not built) hold each
implementation, for tests and benchmarks.
"""

from __future__ import annotations

import math
import os
import re
from struct import Struct
from types import ModuleType, SimpleNamespace

__all__ = [
    "IMPLEMENTATION",
    "MAX_BUCKETS",
    "PYTHON",
    "C",
    "Histogram",
    "blank_literals",
    "bucket_of",
    "reason",
    "record_pair",
    "scan_rows",
    "split",
    "statement_shape",
]

_unpack_len = Struct("!I").unpack_from
_MASK = (1 << 64) - 1
_ROW, _COPY_DATA = ord("D"), ord("d")
_SCALE = 8 / math.log(2)  # BUCKETS_PER_DOUBLING / log(2), as twinkly.perf.latency
_log = math.log
_LITERALS = re.compile(r"'[^']*'|\b\d+\b")
_UNSAFE = ('"', "$", "\\", "--", "/*")
MAX_BUCKETS = 4096
_MICROSECOND = 1e-6


def _split(data: bytes, limit: int) -> tuple[list[tuple[int, bytes]], int, int]:
    out: list[tuple[int, bytes]] = []
    pos = 0
    size = len(data)
    need = 5
    while size - pos >= 5:
        length = _unpack_len(data, pos + 1)[0]
        if length < 4 or length > limit:
            need = -1
            break
        end = pos + 1 + length
        if end > size:
            need = end - pos
            break
        out.append((data[pos], data[pos + 5 : end]))
        pos = end
    return out, pos, need


def _scan_rows(
    data: bytes, pos: int, limit: int, sample: list[bytes] | None, room: int
) -> tuple[int, int, int, int]:
    size = len(data)
    rows = digest = 0
    pos = max(pos, 0)
    while size - pos >= 5:
        type_byte = data[pos]
        if type_byte != _ROW and type_byte != _COPY_DATA:
            break
        length = _unpack_len(data, pos + 1)[0]
        if length < 4 or length > limit:
            break
        end = pos + 1 + length
        if end > size:
            break
        row = data[pos + 5 : end]
        digest += hash(row)
        rows += 1
        if room > 0:
            sample.append(row)  # type: ignore[union-attr]
            room -= 1
        elif room == 0:
            room = -1
        pos = end
    return pos, rows, digest & _MASK, room


def _bucket_of(seconds: float) -> int:
    micros = seconds / 1e-6
    return int(_log(micros) * _SCALE) if micros > 1.0 else 0


def _blank_literals(sql: str) -> str:
    return _LITERALS.sub("0", sql)


def _statement_shape(sql: str) -> str:
    for mark in _UNSAFE:
        if mark in sql:
            return sql
    return _LITERALS.sub("0", sql)


class _Histogram:
    """Counts of timings in logarithmic buckets, kept sparse."""

    __slots__ = ("buckets", "count", "max", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, index: int, seconds: float) -> None:
        if not 0 <= index < MAX_BUCKETS:
            raise ValueError(f"bucket index {index} out of range")
        buckets = self.buckets
        buckets[index] = buckets.get(index, 0) + 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    def record(self, seconds: float) -> None:
        self.add(_bucket_of(seconds), seconds)

    def quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        if q >= 1.0:
            return self.max
        rank = q * self.count
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(math.exp((index + 0.5) / _SCALE) * _MICROSECOND, self.max)
        return self.max


def _record_pair(
    truth_fp: _Histogram,
    target_fp: _Histogram,
    truth_all: _Histogram,
    target_all: _Histogram,
    truth: float,
    target: float,
) -> None:
    a, b = _bucket_of(truth), _bucket_of(target)
    truth_fp.add(a, truth)
    target_fp.add(b, target)
    truth_all.add(a, truth)
    target_all.add(b, target)


PYTHON = SimpleNamespace(
    name="python",
    split=_split,
    scan_rows=_scan_rows,
    bucket_of=_bucket_of,
    blank_literals=_blank_literals,
    statement_shape=_statement_shape,
    Histogram=_Histogram,
    record_pair=_record_pair,
)

C: ModuleType | None
try:
    from twinkly.wire import _accel as C  # type: ignore[attr-defined, no-redef]
except ImportError:  # built without a compiler: the pure-Python implementation serves
    C = None

_FORCED = os.environ.get("TWINKLY_PURE_PYTHON", "") not in ("", "0")
_chosen = PYTHON if C is None or _FORCED else C
IMPLEMENTATION = "python" if _chosen is PYTHON else "c"


def reason() -> str:
    """Why the pure-Python implementation runs, for the start-up log ("" for C)."""
    if IMPLEMENTATION == "c":
        return ""
    return " (TWINKLY_PURE_PYTHON is set)" if _FORCED else " (the C extension was not built)"


split = _chosen.split
scan_rows = _chosen.scan_rows
bucket_of = _chosen.bucket_of
blank_literals = _chosen.blank_literals
statement_shape = _chosen.statement_shape
Histogram = _chosen.Histogram
record_pair = _chosen.record_pair

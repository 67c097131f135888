"""The hot path's per-message and per-row work, in C when the extension was built.

Four functions, with one meaning whichever implementation runs:

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
- ``blank_literals(sql) -> str``: ``re.sub(r"'[^']*'|\\b\\d+\\b", "0", sql)``, the
  fingerprint cache's key.

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
    "PYTHON",
    "C",
    "blank_literals",
    "bucket_of",
    "reason",
    "scan_rows",
    "split",
]

_unpack_len = Struct("!I").unpack_from
_MASK = (1 << 64) - 1
_ROW, _COPY_DATA = ord("D"), ord("d")
_SCALE = 8 / math.log(2)  # BUCKETS_PER_DOUBLING / log(2), as twinkly.perf.latency
_log = math.log
_LITERALS = re.compile(r"'[^']*'|\b\d+\b")


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


PYTHON = SimpleNamespace(
    name="python",
    split=_split,
    scan_rows=_scan_rows,
    bucket_of=_bucket_of,
    blank_literals=_blank_literals,
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

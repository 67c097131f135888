"""Report events: what Twinkly writes when the two databases answer differently.

An event is a plain dict, built by :func:`make_event` and turned into one JSON line by
:func:`encode_event`. Its id is ULID-style (48-bit millisecond timestamp + 80 random bits,
Crockford base32): unique across processes and restarts without coordination, and sorting ids
sorts events by time, so report files from several runs can be merged and never collide.
No Twisted import here: the ``report`` command line reads these events without a reactor.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import os
import secrets
import threading
import uuid
from typing import Any

KINDS = (
    "result_mismatch",
    "column_mismatch",
    "tag_mismatch",
    "error_divergence",
    "transaction_divergence",
    "nondeterministic",
    "noise",
    "backend_unavailable",
    "backend_recovered",  # a backend that was unavailable answers again
    "statement_cut_short",  # cancelled because its client or the truth went away: not compared
    "target_stalled",  # the target kept a client waiting too long: dropped for that session
    "slow_query",  # the target was slower by the configured ratio and margin
    "fingerprint_regression",  # a fingerprint's median got slower on the target
    "insight",  # an explanation that came later (an LLM's), linked by "event"
    "volatile_write",  # columns given values each server computed itself (later noise)
)
# Kinds that are expected and not a problem with the target: shown after everything else.
BENIGN_KINDS = frozenset({"nondeterministic", "noise", "volatile_write", "backend_recovered"})
# Kinds that say the two databases answered differently.
MISMATCH_KINDS = frozenset(
    (
        "result_mismatch",
        "column_mismatch",
        "tag_mismatch",
        "error_divergence",
        "transaction_divergence",
    )
)
# Kinds about speed, not about answers.
PERFORMANCE_KINDS = frozenset({"slow_query", "fingerprint_regression", "insight"})

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_LENGTH = 26
_TIME_BITS = 48
_RANDOM_BITS = 80
_MAX_TIME = (1 << _TIME_BITS) - 1
_MAX_RANDOM = (1 << _RANDOM_BITS) - 1
_RESERVED = frozenset({"id", "time"})


def to_millis(now: float) -> int:
    """Seconds since the epoch -> whole milliseconds (nearest, so 0.123 gives 123)."""
    ms = round(now * 1000)
    if not 0 <= ms <= _MAX_TIME:
        raise ValueError(f"time out of range for an event id: {now!r}")
    return ms


def format_millis(ms: int) -> str:
    """Milliseconds since the epoch -> ``2024-05-01T12:34:56.789Z``."""
    seconds, millis = divmod(ms, 1000)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"


def encode_id(value: int) -> str:
    """A 128-bit integer -> 26 Crockford base32 characters (same order as the integers)."""
    chars = []
    for _ in range(ID_LENGTH):
        value, digit = divmod(value, 32)
        chars.append(CROCKFORD[digit])
    return "".join(reversed(chars))


class EventIdGenerator:
    """Makes ULID-style ids, strictly increasing within this generator.

    Within one millisecond (or when the clock steps back) the previous id's random part is
    incremented instead of drawn again, so ids keep their order; the random start of each
    millisecond keeps independent generators (other processes, earlier runs) apart.
    Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def reset(self) -> None:
        """Forget the last id (a forked child must not continue its parent's sequence)."""
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def new_id_ms(self, ms: int) -> str:
        if not 0 <= ms <= _MAX_TIME:
            raise ValueError(f"timestamp out of range for an event id: {ms!r} ms")
        with self._lock:
            if ms > self._last_ms:
                rand = secrets.randbits(_RANDOM_BITS)
            else:  # same millisecond, or the clock went back: keep the order
                ms = self._last_ms
                rand = self._last_random + 1
                if rand > _MAX_RANDOM:  # 2**80 ids in one ms: borrow the next ms
                    ms += 1
                    rand = secrets.randbits(_RANDOM_BITS - 1)
                    if ms > _MAX_TIME:
                        raise ValueError("event id space exhausted")
            self._last_ms, self._last_random = ms, rand
        return encode_id((ms << _RANDOM_BITS) | rand)

    def new_id(self, now: float) -> str:
        return self.new_id_ms(to_millis(now))


_DEFAULT_IDS = EventIdGenerator()
os.register_at_fork(after_in_child=_DEFAULT_IDS.reset)


def new_event_id(now: float) -> str:
    """A unique, time-ordered id for an event at ``now`` (seconds since the epoch)."""
    return _DEFAULT_IDS.new_id(now)


def make_event(
    kind: str,
    *,
    now: float,
    session: int | None,
    statement: str | None,
    fingerprint: str | None,
    truth: dict | None,
    target: dict | None,
    differences: list | None = None,
    parameters: list | None = None,
    caused_by: str | None = None,
    in_transaction: bool = False,
    reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One report event. ``truth``/``target`` describe each side's answer (label, rows,
    digest, tag, sqlstate, message, elapsed_ms); ``caused_by`` is the id of an earlier event
    this one follows from (e.g. statements failing after a transaction diverged)."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}; expected one of {', '.join(KINDS)}")
    clash = _RESERVED.intersection(extra)
    if clash:
        raise ValueError(f"event fields {sorted(clash)} are set by make_event")
    ms = to_millis(now)
    event: dict[str, Any] = {
        "id": _DEFAULT_IDS.new_id_ms(ms),
        "time": format_millis(ms),
        "kind": kind,
        "session": session,
        "statement": statement,
        "parameters": parameters,
        "fingerprint": fingerprint,
        "truth": truth,
        "target": target,
        "differences": differences,
        "caused_by": caused_by,
        "in_transaction": in_transaction,
        "reason": reason,
    }
    event.update(extra)
    return event


def json_default(value: object) -> object:
    """JSON for values json cannot encode: bytes as PostgreSQL's bytea hex (``\\x0aff``).

    Anything unknown becomes its ``repr``: a report must not lose an event over an odd value.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return repr(value)


def _finite(value: object) -> object:
    """A copy with NaN and infinities as strings (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def encode_event(event: dict[str, Any]) -> bytes:
    """One event -> one line of strict, ASCII-only JSON ending in a newline.

    Raises ValueError/TypeError only for values no JSON can hold (e.g. a reference cycle).
    """
    options: dict[str, Any] = {
        "default": json_default,
        "separators": (",", ":"),
        "ensure_ascii": True,
        "allow_nan": False,
    }
    try:
        text = json.dumps(event, **options)
    except ValueError as e:  # NaN or an infinity somewhere: rare, so a slow path is fine
        if "Out of range float" not in str(e):
            raise  # e.g. a reference cycle: no JSON for that
        text = json.dumps(_finite(event), **options)
    return text.encode("ascii") + b"\n"

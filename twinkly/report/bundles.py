"""Repro bundles: one JSON file per mismatching statement fingerprint, enough to re-run it.

A report event says *that* the two databases answered differently; a bundle keeps what
``twinkly recheck`` needs to ask them again later: the statement, its parameters (and their
type OIDs and formats when known), the session settings it ran under, and both answers as
the proxy saw them. Only the first event of each fingerprint makes a bundle; later ones bump
a counter in memory. Bundles from earlier runs are never overwritten.

Like :class:`twinkly.report.sink.JsonLinesSink`, the reactor thread only encodes the bundle
(a snapshot of the event) and queues it; a writer thread, started at the first bundle, puts
each one in place with a temporary file and ``os.link`` (which refuses to replace a file), so
a bundle is either complete or absent.

The digests in the proxy's events are sums of Python's per-process ``hash()``: they cannot be
recomputed by another process. :func:`portable_digest` is the digest ``recheck`` computes on
both sides instead (:data:`PORTABLE_DIGEST` names it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twinkly.report.events import json_default
from twinkly.report.sink import IEventSink
from twinkly.report.writer import QueuedWriter

_log = Logger(namespace="twinkly.report")

FORMAT = "twinkly-bundle"
VERSION = 1
#: Event kinds worth a bundle: real differences, not noise or their consequences.
BUNDLE_KINDS = frozenset({"result_mismatch", "column_mismatch", "tag_mismatch", "error_divergence"})
SIDE_FIELDS = ("label", "rows", "digest", "tag", "sqlstate", "message")
#: What the ``digest`` of the proxy's events is, unless the event says otherwise.
LIVE_DIGEST = "python-hash-sum (per process: not comparable across processes)"
#: The digest recheck computes: each row encoded as a DataRow payload of its text-format
#: values (int16 field count; per field an int32 length, -1 for NULL, then the bytes),
#: hashed with BLAKE2b with an 8-byte digest read as a big-endian integer; the row hashes
#: summed modulo 2**64 (so row order does not matter); printed as 16 hex digits.
PORTABLE_DIGEST = "blake2b64-rowsum-v1"
_SAFE_NAME = re.compile(r"[0-9A-Za-z_-]{1,64}")
_I16, _I32 = struct.Struct("!h").pack, struct.Struct("!i").pack
_MASK = (1 << 64) - 1


def data_row(values: Sequence[bytes | None]) -> bytes:
    """Field values -> a DataRow payload, as :func:`twinkly.compare.rows.compare_rows` takes."""
    parts = [_I16(len(values))]
    for value in values:
        if value is None:
            parts.append(_I32(-1))
        else:
            parts.append(_I32(len(value)))
            parts.append(bytes(value))
    return b"".join(parts)


def portable_digest(rows: Iterable[bytes]) -> str:
    """:data:`PORTABLE_DIGEST` of DataRow payloads: the same in every process and version."""
    total = 0
    for row in rows:
        total += int.from_bytes(hashlib.blake2b(row, digest_size=8).digest(), "big")
    return f"{total & _MASK:016x}"


def bundle_name(fingerprint: object, statement: object) -> str | None:
    """The file name stem for an event: its fingerprint when that is a safe name, else a hash
    of it (or of the statement when there is no fingerprint); None without either."""
    if isinstance(fingerprint, str) and fingerprint:
        if _SAFE_NAME.fullmatch(fingerprint):
            return fingerprint
        key = "fp:" + fingerprint
    elif isinstance(statement, str) and statement:
        key = "sql:" + " ".join(statement.split())
    else:
        return None
    return hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).hexdigest()


def make_bundle(event: dict, *, redacted: bool = False) -> dict[str, Any]:
    """The bundle for one event (a new dict; nested values are shared with the event)."""
    sides = {}
    for side in ("truth", "target"):
        value = event.get(side)
        sides[side] = {k: value.get(k) for k in SIDE_FIELDS} if isinstance(value, dict) else None
    return {
        "format": FORMAT,
        "version": VERSION,
        "event_id": event.get("id"),
        "time": event.get("time"),
        "kind": event.get("kind"),
        "fingerprint": event.get("fingerprint"),
        "session": event.get("session"),
        "in_transaction": event.get("in_transaction", False),
        "reason": event.get("reason"),
        "caused_by": event.get("caused_by"),
        "redacted": bool(redacted or event.get("redacted", False)),
        "statement": event.get("statement"),
        "parameters": event.get("parameters"),
        "parameter_types": event.get("parameter_types"),
        "parameter_formats": event.get("parameter_formats"),
        "settings": event.get("settings") or {},
        "truth": sides["truth"],
        "target": sides["target"],
        "differences": event.get("differences"),
        "digest_algorithm": event.get("digest_algorithm") or LIVE_DIGEST,
    }


def encode_bundle(bundle: dict[str, Any]) -> bytes:
    """Indented, ASCII-only JSON: bundles are read by people as well as by ``recheck``."""
    text = json.dumps(bundle, default=json_default, indent=2, ensure_ascii=True)
    return text.encode("ascii") + b"\n"


@implementer(IEventSink)
class BundleWriter(QueuedWriter):
    """Writes ``<directory>/<fingerprint>.json`` for the first mismatch of each fingerprint.

    At most ``max_bundles`` fingerprints get a bundle (later new ones count in ``overflow``);
    ``occurrences`` counts every mismatch event per bundled fingerprint. Counters: ``written``
    bundles on disk, ``existing`` skipped because a file (from an earlier run) was there,
    ``dropped`` lost (queue full, after close, unencodable, too large, write error).
    ``redacted`` marks every bundle as holding redacted SQL, which recheck will not run.
    """

    def __init__(
        self,
        directory: str | Path,
        reactor: Any = None,
        *,
        max_bundles: int = 1000,
        max_bundle_bytes: int = 16 * 1024 * 1024,
        max_queue_bytes: int = 64 * 1024 * 1024,
        redacted: bool = False,
        call_in_reactor: Callable[..., object] | None = None,
    ) -> None:
        if call_in_reactor is None:
            if reactor is None:
                raise ValueError("BundleWriter needs a reactor or call_in_reactor")
            call_in_reactor = reactor.callFromThread
        self.directory = Path(directory)
        self.max_bundles = max_bundles
        self.max_bundle_bytes = max_bundle_bytes
        self.max_queue_bytes = max_queue_bytes
        self.redacted = redacted
        super().__init__(call_in_reactor)
        self.occurrences: dict[str, int] = {}
        self.overflow = 0
        self.written = 0
        self.existing = 0
        self._thread: threading.Thread | None = None

    # --- reactor thread -----------------------------------------------------------------

    def emit(self, event: dict) -> None:
        try:
            self._emit(event)
        except Exception:  # IEventSink.emit never raises
            with self._cond:
                self.dropped += 1
            _log.failure("Repro bundle for a {kind!r} event dropped", kind=_kind(event))

    def _emit(self, event: dict) -> None:
        if not isinstance(event, dict) or event.get("kind") not in BUNDLE_KINDS:
            return
        name = bundle_name(event.get("fingerprint"), event.get("statement"))
        if name is None:
            return
        seen = self.occurrences.get(name)
        if seen is not None:
            self.occurrences[name] = seen + 1
            return
        if len(self.occurrences) >= self.max_bundles:
            self.overflow += 1
            return
        self.occurrences[name] = 1
        data = encode_bundle(make_bundle(event, redacted=self.redacted))
        if len(data) > self.max_bundle_bytes:
            with self._cond:
                self.dropped += 1
            _log.warn(
                "Repro bundle {name} not written: {size} bytes is over the limit",
                name=name,
                size=len(data),
            )
            return
        with self._cond:
            if self._closing or self._queued_bytes + len(data) > self.max_queue_bytes:
                self.dropped += 1
                del self.occurrences[name]  # a later occurrence may try again
                return
            self._queue.append((name, data))
            self._queued_bytes += len(data)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="twinkly-bundle-writer", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def close(self) -> Deferred[None]:
        """Stop accepting bundles; fires once the queued ones are written. Never fails."""
        with self._cond:
            self._closing = True
            if self._finished or self._thread is None:
                self._finished = True
                return succeed(None)
            return self._wait_for_finish()

    # --- writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return
                    name, data = self._queue.popleft()
                    self._queued_bytes -= len(data)
                self._write(name, data)
        except Exception:  # a bug: say so, and still release the close() waiters
            failure = Failure()  # type: ignore[no-untyped-call]
            self._call_in_reactor(_log.failure, "Repro bundle writer crashed", failure)
        finally:
            self._finish()

    def _write(self, name: str, data: bytes) -> None:
        """Write ``data`` as ``<name>.json`` unless that file exists; never half a file."""
        final = self.directory / f"{name}.json"
        temporary = self.directory / f".{name}.json.{os.getpid()}.{threading.get_ident()}.tmp"
        outcome = "written"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if final.exists():
                outcome = "existing"
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                fd = os.open(temporary, flags, 0o644)
                try:
                    view = memoryview(data)
                    done = 0
                    while done < len(data):
                        done += os.write(fd, view[done:])
                    os.fsync(fd)
                finally:
                    os.close(fd)
                try:
                    os.link(temporary, final)  # unlike rename, never replaces a file
                except FileExistsError:
                    outcome = "existing"
        except OSError as e:
            outcome = "dropped"
            self._call_in_reactor(
                _log.error,
                "Cannot write repro bundle {path}: {error}",
                path=str(final),
                error=str(e),
            )
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        with self._cond:
            setattr(self, outcome, getattr(self, outcome) + 1)


def _kind(event: object) -> object:
    return event.get("kind") if isinstance(event, dict) else type(event).__name__

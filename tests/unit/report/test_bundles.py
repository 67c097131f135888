"""Repro bundles: one file per mismatching fingerprint, written by a real writer thread.

No reactor: the writer's ``call_in_reactor`` runs calls at once under a lock, and the tests
wait for ``close()`` with a threading.Event.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twinkly.report.bundles import (
    BUNDLE_KINDS,
    FORMAT,
    LIVE_DIGEST,
    PORTABLE_DIGEST,
    BundleWriter,
    bundle_name,
    data_row,
    make_bundle,
    portable_digest,
)
from twinkly.report.events import KINDS, make_event
from twinkly.report.sink import FanOutSink, IEventSink, MemorySink

NOW = 1_700_000_000.123
TIMEOUT = 10.0


def event(
    fingerprint: str | None = "fp1", kind: str = "result_mismatch", n: int = 0, **extra: Any
) -> dict[str, Any]:
    return make_event(
        kind,
        now=NOW + n / 1000,
        session=7,
        statement="select * from t where id = $1",
        fingerprint=fingerprint,
        truth={"label": "pg15", "rows": 1, "digest": "00ff", "tag": "SELECT 1",
               "sqlstate": None, "message": None, "elapsed_ms": 1.5},
        target={"label": "pg18", "rows": 1, "digest": "0a0b", "tag": "SELECT 1",
                "sqlstate": None, "message": None, "elapsed_ms": 2.5},
        differences=[{"kind": "value", "position": None, "truth": ["2", "b"],
                      "target": ["2", "X"], "columns": ["v"]}],
        parameters=[str(n)],
        reason="1 rows differ",
        **extra,
    )  # fmt: skip


class ReactorStandIn:
    """Runs the writer thread's calls at once, under a lock (Deferreds are not thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[Callable[..., object], tuple, dict]] = []

    def __call__(self, f: Callable[..., object], *args: object, **kwargs: object) -> None:
        with self.lock:
            self.calls.append((f, args, kwargs))
            f(*args, **kwargs)


class BundleWriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp()) / "bundles"
        self.call = ReactorStandIn()

    def writer(self, **kw: Any) -> BundleWriter:
        return BundleWriter(self.directory, None, call_in_reactor=self.call, **kw)

    def close(self, writer: BundleWriter) -> None:
        fired = threading.Event()
        with self.call.lock:
            writer.close().addCallback(lambda _: fired.set())
        self.assertTrue(fired.wait(TIMEOUT), "close() did not fire")

    def files(self) -> list[str]:
        return sorted(os.listdir(self.directory)) if self.directory.exists() else []

    def read(self, name: str) -> dict[str, Any]:
        return json.loads((self.directory / f"{name}.json").read_bytes())

    def test_provides_the_sink_interface(self) -> None:
        self.assertTrue(verifyObject(IEventSink, self.writer()))

    def test_needs_a_way_to_reach_the_reactor(self) -> None:
        self.assertRaises(ValueError, BundleWriter, self.directory, None)

    def test_one_bundle_per_fingerprint(self) -> None:
        writer = self.writer()
        first = event("fp1", n=1)
        writer.emit(first)
        writer.emit(event("fp1", n=2))
        writer.emit(event("fp1", kind="error_divergence", n=3))
        writer.emit(event("fp2", kind="tag_mismatch", n=4))
        self.close(writer)
        self.assertEqual(self.files(), ["fp1.json", "fp2.json"])  # the directory was created
        self.assertEqual(self.read("fp1")["event_id"], first["id"])  # the first occurrence
        self.assertEqual(self.read("fp1")["parameters"], ["1"])
        self.assertEqual(writer.occurrences, {"fp1": 3, "fp2": 1})
        self.assertEqual((writer.written, writer.existing, writer.dropped), (2, 0, 0))

    def test_only_mismatch_kinds(self) -> None:
        writer = self.writer()
        for n, kind in enumerate(KINDS):
            writer.emit(event(f"fp_{kind}", kind=kind, n=n))
        self.close(writer)
        self.assertEqual(self.files(), sorted(f"fp_{kind}.json" for kind in BUNDLE_KINDS))
        self.assertEqual(
            set(BUNDLE_KINDS),
            {"result_mismatch", "column_mismatch", "tag_mismatch", "error_divergence"},
        )

    def test_noise_writes_nothing_and_starts_no_thread(self) -> None:
        writer = self.writer()
        writer.emit(event("fp1", kind="noise"))
        writer.emit(event("fp2", kind="nondeterministic"))
        writer.emit(event(None, kind="transaction_divergence"))
        self.assertIsNone(writer._thread)
        self.close(writer)  # fires at once
        self.assertEqual(self.files(), [])
        self.assertEqual(writer.occurrences, {})

    def test_existing_file_is_not_overwritten(self) -> None:
        self.directory.mkdir(parents=True)
        (self.directory / "fp1.json").write_text("from an earlier run\n")
        writer = self.writer()
        writer.emit(event("fp1"))
        writer.emit(event("fp2"))
        self.close(writer)
        self.assertEqual((self.directory / "fp1.json").read_text(), "from an earlier run\n")
        self.assertEqual(self.read("fp2")["fingerprint"], "fp2")
        self.assertEqual((writer.written, writer.existing), (1, 1))
        self.assertEqual(self.files(), ["fp1.json", "fp2.json"])  # no temporary files left

    def test_max_bundles(self) -> None:
        writer = self.writer(max_bundles=2)
        for n in range(5):
            writer.emit(event(f"fp{n}", n=n))
        writer.emit(event("fp0", n=9))  # an old fingerprint still counts
        self.close(writer)
        self.assertEqual(self.files(), ["fp0.json", "fp1.json"])
        self.assertEqual(writer.overflow, 3)
        self.assertEqual(writer.occurrences, {"fp0": 2, "fp1": 1})

    def test_contents(self) -> None:
        settings = {"TimeZone": "Asia/Tokyo", "DateStyle": "ISO, MDY", "search_path": "app"}
        source = event("fp1", parameter_types=[23], parameter_formats=[0], settings=settings, n=5)
        writer = self.writer()
        writer.emit(source)
        self.close(writer)
        bundle = self.read("fp1")
        self.assertEqual(bundle["format"], FORMAT)
        self.assertEqual(bundle["version"], 1)
        self.assertEqual(bundle["event_id"], source["id"])
        self.assertEqual(bundle["time"], "2023-11-14T22:13:20.128Z")
        self.assertEqual(bundle["kind"], "result_mismatch")
        self.assertEqual(bundle["session"], 7)
        self.assertEqual(bundle["statement"], "select * from t where id = $1")
        self.assertEqual(bundle["parameters"], ["5"])
        self.assertEqual(bundle["parameter_types"], [23])
        self.assertEqual(bundle["parameter_formats"], [0])
        self.assertEqual(bundle["settings"], settings)
        self.assertEqual(
            bundle["truth"],
            {"label": "pg15", "rows": 1, "digest": "00ff", "tag": "SELECT 1",
             "sqlstate": None, "message": None},
        )  # fmt: skip
        self.assertEqual(bundle["target"]["label"], "pg18")
        self.assertEqual(bundle["target"]["digest"], "0a0b")
        self.assertEqual(bundle["differences"], source["differences"])
        self.assertEqual(bundle["reason"], "1 rows differ")
        self.assertEqual(bundle["digest_algorithm"], LIVE_DIGEST)
        self.assertFalse(bundle["redacted"])

    def test_optional_fields_default(self) -> None:
        bundle = make_bundle(event("fp1"))
        self.assertIsNone(bundle["parameter_types"])
        self.assertEqual(bundle["settings"], {})
        self.assertEqual(make_bundle(event(), redacted=True)["redacted"], True)
        portable = make_bundle(event(digest_algorithm=PORTABLE_DIGEST))
        self.assertEqual(portable["digest_algorithm"], PORTABLE_DIGEST)

    def test_odd_fingerprints_get_safe_names(self) -> None:
        self.assertEqual(bundle_name("0123abcdef", "x"), "0123abcdef")
        unsafe = bundle_name("../../etc/passwd", "x")
        assert unsafe is not None
        self.assertRegex(unsafe, r"^[0-9a-f]{16}$")
        by_statement = bundle_name(None, "select  1")
        self.assertEqual(by_statement, bundle_name(None, "select 1"))
        self.assertNotEqual(by_statement, bundle_name(None, "select 2"))
        self.assertIsNone(bundle_name(None, None))
        writer = self.writer()
        writer.emit(event("../escape"))
        writer.emit(event(None))
        writer.emit(event(None, n=1))  # same statement: same bundle
        self.close(writer)
        self.assertEqual(len(self.files()), 2)
        self.assertTrue(all(name.endswith(".json") for name in self.files()))

    def test_after_close_and_bad_events(self) -> None:
        writer = self.writer()
        writer.emit("not an event")  # type: ignore[arg-type]
        writer.emit({"kind": "result_mismatch", "fingerprint": "fp", "differences": {2, 1}})
        self.close(writer)
        writer.emit(event("late"))
        self.assertEqual(self.files(), ["fp.json"])  # a set is written as a list
        self.assertEqual(self.read("fp")["differences"], [1, 2])
        self.assertEqual(writer.dropped, 1)
        self.close(writer)  # twice is fine

    def test_write_error_is_logged_and_counted(self) -> None:
        self.directory.parent.mkdir(parents=True)
        self.directory.write_text("a file where the directory should be")
        writer = self.writer()
        writer.emit(event("fp1"))
        self.close(writer)
        self.assertEqual((writer.written, writer.dropped), (0, 1))
        logged = [kw for f, _, kw in self.call.calls if kw.get("error")]
        self.assertEqual(len(logged), 1)

    def test_oversized_bundle_dropped(self) -> None:
        writer = self.writer(max_bundle_bytes=100)
        writer.emit(event("fp1"))
        self.close(writer)
        self.assertEqual((self.files(), writer.dropped), ([], 1))

    def test_in_a_fan_out_next_to_other_sinks(self) -> None:
        memory = MemorySink()
        writer = self.writer()
        fan = FanOutSink(memory, writer)
        fan.emit(event("fp1"))
        fired = threading.Event()
        with self.call.lock:
            fan.close().addCallback(lambda _: fired.set())
        self.assertTrue(fired.wait(TIMEOUT))
        self.assertEqual((len(memory.events), self.files()), (1, ["fp1.json"]))


class PortableDigestTests(SynchronousTestCase):
    def test_data_row(self) -> None:
        self.assertEqual(data_row([b"ab", None]), b"\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff")
        self.assertEqual(data_row([]), b"\x00\x00")

    def test_order_independent_and_stable(self) -> None:
        rows = [data_row([b"1", b"a"]), data_row([b"2", None])]
        self.assertEqual(portable_digest(rows), portable_digest(reversed(rows)))
        expected = sum(
            int.from_bytes(hashlib.blake2b(r, digest_size=8).digest(), "big") for r in rows
        ) % (1 << 64)
        self.assertEqual(portable_digest(rows), f"{expected:016x}")
        self.assertEqual(portable_digest([]), "0" * 16)
        self.assertNotEqual(portable_digest(rows[:1]), portable_digest(rows[1:]))
        # NULL and the empty string differ
        self.assertNotEqual(portable_digest([data_row([None])]), portable_digest([data_row([b""])]))

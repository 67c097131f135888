"""Report events (ids, fields, JSON) and the sinks that write them, with a real writer thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twinkly.report import events as ev
from twinkly.report.events import (
    KINDS,
    EventIdGenerator,
    encode_event,
    make_event,
    new_event_id,
)
from twinkly.report.sink import FanOutSink, IEventSink, JsonLinesSink, MemorySink

NOW = 1_700_000_000.123  # 2023-11-14T22:13:20.123Z
TIMEOUT = 10.0


def event(n: int = 0, kind: str = "result_mismatch", **extra: Any) -> dict[str, Any]:
    return make_event(
        kind,
        now=NOW + n / 1000,
        session=1,
        statement=f"SELECT {n}",
        fingerprint="fp",
        truth={"label": "pg15", "rows": 1},
        target={"label": "pg18", "rows": 2},
        seq=n,
        **extra,
    )


class ReactorStandIn:
    """The sink's ``call_in_reactor`` for tests: runs the call at once in the writer thread,
    under a lock the test holds while it attaches callbacks (Deferreds are not thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __call__(self, f: Callable[..., object], *args: object, **kwargs: object) -> None:
        with self.lock:
            f(*args, **kwargs)


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


class GatedSink(JsonLinesSink):
    """Its writer thread waits for ``gate`` before each write: a disk that is slow on demand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.gate = threading.Event()
        super().__init__(*args, **kwargs)

    def _write(self, data: bytes) -> int:
        self.gate.wait(TIMEOUT)
        return super()._write(data)


class EventIdTests(SynchronousTestCase):
    def test_same_millisecond_unique_and_sorted(self) -> None:
        gen = EventIdGenerator()
        ids = [gen.new_id(NOW) for _ in range(10_000)]
        self.assertEqual(len(set(ids)), 10_000)
        self.assertEqual(ids, sorted(ids))
        for i in ids[:100]:
            self.assertEqual(len(i), 26)
            self.assertTrue(set(i) <= set(ev.CROCKFORD))

    def test_timestamp_prefix(self) -> None:
        ident = EventIdGenerator().new_id(NOW)
        value = 0
        for char in ident[:10]:
            value = value * 32 + ev.CROCKFORD.index(char)
        self.assertEqual(value, 1_700_000_000_123)

    def test_two_processes_unique(self) -> None:
        """Two independent generators (two processes, or a restart) in the same ms."""
        one, two = EventIdGenerator(), EventIdGenerator()
        ids = [g.new_id(NOW) for _ in range(5_000) for g in (one, two)]
        self.assertEqual(len(set(ids)), 10_000)

    def test_time_ordered_across_generators(self) -> None:
        early = EventIdGenerator().new_id(NOW)
        late = EventIdGenerator().new_id(NOW + 0.001)
        self.assertLess(early, late)

    def test_clock_going_back_keeps_order(self) -> None:
        gen = EventIdGenerator()
        ids = [gen.new_id(NOW), gen.new_id(NOW - 5), gen.new_id(NOW - 10)]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), 3)

    def test_random_part_overflow_borrows_next_millisecond(self) -> None:
        gen = EventIdGenerator()
        first = gen.new_id(NOW)
        gen._last_random = ev._MAX_RANDOM
        second = gen.new_id(NOW)
        self.assertLess(first, second)
        self.assertEqual(second[:10], EventIdGenerator().new_id(NOW + 0.001)[:10])

    def test_out_of_range(self) -> None:
        self.assertRaises(ValueError, new_event_id, -1.0)
        self.assertRaises(ValueError, new_event_id, 2.0**48)

    def test_threads_share_the_default_generator(self) -> None:
        ids: list[list[str]] = [[] for _ in range(4)]

        def make(out: list[str]) -> None:
            out.extend(new_event_id(NOW) for _ in range(2_000))

        threads = [threading.Thread(target=make, args=(out,)) for out in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        flat = [i for out in ids for i in out]
        self.assertEqual(len(set(flat)), 8_000)
        for out in ids:
            self.assertEqual(out, sorted(out))


class MakeEventTests(SynchronousTestCase):
    def test_fields(self) -> None:
        e = make_event(
            "tag_mismatch",
            now=NOW,
            session=7,
            statement="UPDATE t SET x = 1",
            fingerprint="abc",
            truth={"label": "pg15", "tag": "UPDATE 3"},
            target={"label": "pg18", "tag": "UPDATE 2"},
            in_transaction=True,
            backend="pg18",
        )
        self.assertEqual(
            list(e),
            [
                "id",
                "time",
                "kind",
                "session",
                "statement",
                "parameters",
                "fingerprint",
                "truth",
                "target",
                "differences",
                "caused_by",
                "in_transaction",
                "reason",
                "backend",
            ],
        )
        self.assertEqual(e["time"], "2023-11-14T22:13:20.123Z")
        self.assertEqual(e["kind"], "tag_mismatch")
        self.assertEqual(e["session"], 7)
        self.assertIs(e["in_transaction"], True)
        self.assertIsNone(e["differences"])
        self.assertEqual(e["backend"], "pg18")

    def test_every_kind_accepted(self) -> None:
        for kind in KINDS:
            self.assertEqual(event(kind=kind)["kind"], kind)

    def test_unknown_kind_rejected(self) -> None:
        self.assertRaises(ValueError, event, kind="mismatch")

    def test_reserved_extra_rejected(self) -> None:
        self.assertRaises(ValueError, event, id="mine")
        self.assertRaises(ValueError, event, time="now")

    def test_encode_bytes_and_odd_values(self) -> None:
        e = event(parameters=[b"\x00\xff", None, 1.5], caused_by="01ABC")
        e["truth"]["rows"] = [[b"ab", float("nan"), float("-inf")]]
        e["target"]["when"] = ev.datetime.date(2024, 1, 2)
        e["statement"] = "SELECT 'żółw'\n"
        line = encode_event(e)
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        line.decode("ascii")  # strict, ASCII-only JSON
        back = json.loads(line)
        self.assertEqual(back["parameters"], ["\\x00ff", None, 1.5])
        self.assertEqual(back["truth"]["rows"], [["\\x6162", "NaN", "-Infinity"]])
        self.assertEqual(back["target"]["when"], "2024-01-02")
        self.assertEqual(back["statement"], "SELECT 'żółw'\n")
        self.assertEqual(back["caused_by"], "01ABC")

    def test_reference_cycle_is_an_error(self) -> None:
        e = event()
        e["truth"]["self"] = e
        self.assertRaises(ValueError, encode_event, e)


class JsonLinesSinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.call = ReactorStandIn()
        self.sinks: list[JsonLinesSink] = []

    def tearDown(self) -> None:
        for sink in self.sinks:  # no writer thread outlives its test
            self.close(sink)

    def sink(self, path: str | Path, cls: type[JsonLinesSink] = JsonLinesSink, **kw: Any) -> Any:
        sink = cls(path, None, call_in_reactor=self.call, **kw)
        self.sinks.append(sink)
        return sink

    def close(self, sink: JsonLinesSink) -> object:
        fired = threading.Event()
        results: list[object] = []

        def done(result: object) -> None:
            results.append(result)
            fired.set()

        with self.call.lock:
            d: Deferred[None] = sink.close()
            d.addBoth(done)
        self.assertTrue(fired.wait(TIMEOUT), "close() did not fire")
        sink._thread.join(TIMEOUT)
        self.assertFalse(sink._thread.is_alive(), "the writer thread is still running")
        return results[0]

    def lines(self, path: str | Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in Path(path).read_bytes().splitlines()]

    def test_interface(self) -> None:
        verifyObject(IEventSink, self.sink(self.mktemp()))

    def test_written_in_order_in_batches(self) -> None:
        path = Path(self.mktemp()) / "deeper" / "report.jsonl"  # parents are created
        sink = self.sink(path, batch_bytes=2_000)
        for n in range(3_000):
            sink.emit(event(n))
        self.assertIsNone(self.close(sink))
        lines = self.lines(path)
        self.assertEqual([e["seq"] for e in lines], list(range(3_000)))
        self.assertEqual(len({e["id"] for e in lines}), 3_000)
        self.assertEqual((sink.emitted, sink.written, sink.dropped), (3_000, 3_000, 0))
        self.assertTrue(path.read_bytes().endswith(b"\n"))

    def test_existing_file_appended_never_truncated(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(b'{"kept": "from before"}\n')
        first = self.sink(path)
        first.emit(event(1))
        self.close(first)
        second = self.sink(path)  # a restart
        second.emit(event(2))
        self.close(second)
        lines = self.lines(path)
        self.assertEqual(lines[0], {"kept": "from before"})
        self.assertEqual([e["seq"] for e in lines[1:]], [1, 2])

    def test_emit_after_close_is_dropped(self) -> None:
        path = self.mktemp()
        sink = self.sink(path)
        sink.emit(event(1))
        self.close(sink)
        sink.emit(event(2))
        self.assertEqual((sink.emitted, sink.written, sink.dropped), (2, 1, 1))
        self.assertEqual(len(self.lines(path)), 1)
        self.assertIsNone(self.close(sink))  # closing again fires at once

    def test_queue_full_drops_are_counted_and_logged_once_per_burst(self) -> None:
        path = self.mktemp()
        sink = self.sink(path, cls=GatedSink, max_queue=3)
        with capturedLogs() as logs:
            sink.emit(event(0))
            self.assertTrue(wait_until(lambda: sink.queued == 0))  # the writer holds it
            for n in range(1, 11):
                sink.emit(event(n))  # never blocks: 3 queued, 7 dropped
            self.assertEqual((sink.queued, sink.dropped), (3, 7))
            sink.gate.set()
            self.assertTrue(wait_until(lambda: sink.written == 4))
            sink.emit(event(11))  # room again: the burst ends
            self.close(sink)
        self.assertEqual([e["seq"] for e in self.lines(path)], [0, 1, 2, 3, 11])
        self.assertEqual((sink.emitted, sink.written, sink.dropped), (12, 5, 7))
        formats = [e["log_format"] for e in logs]
        self.assertEqual(sum("is full" in f for f in formats), 1)
        ended = [e for e in logs if "has room again" in e["log_format"]]
        self.assertEqual([e["count"] for e in ended], [7])

    def test_queue_bounded_in_bytes(self) -> None:
        sink = self.sink(self.mktemp(), cls=GatedSink, max_queue_bytes=1)
        sink.emit(event(0))  # larger than the whole queue
        self.assertEqual(sink.dropped, 1)
        sink.gate.set()

    def test_write_error_logged_once_counted_and_never_raised(self) -> None:
        path = Path(self.mktemp())
        path.mkdir()  # a directory where the file should be
        sink = self.sink(path, retry_interval=0.001)
        with capturedLogs() as logs:
            for n in range(3):
                sink.emit(event(n))
            self.assertTrue(wait_until(lambda: sink.write_errors >= 3))
            self.assertIsNone(self.close(sink))
        self.assertEqual((sink.emitted, sink.written, sink.dropped), (3, 0, 3))
        errors = [e for e in logs if "Cannot write" in e["log_format"]]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["path"], str(path))
        gave_up = [e for e in logs if "could not be written" in e["log_format"]]
        self.assertEqual([e["count"] for e in gave_up], [3])
        self.assertTrue(path.is_dir())

    def test_write_error_retried_until_the_disk_recovers(self) -> None:
        path = Path(self.mktemp())
        path.mkdir()
        sink = self.sink(path, retry_interval=0.001)
        with capturedLogs() as logs:
            sink.emit(event(0))
            self.assertTrue(wait_until(lambda: sink.write_errors >= 2))
            sink.emit(event(1))
            path.rmdir()  # the operator fixes it
            self.assertTrue(wait_until(lambda: sink.written == 2))
            sink.emit(event(2))
            self.close(sink)
        self.assertEqual([e["seq"] for e in self.lines(path)], [0, 1, 2])
        self.assertEqual(sink.dropped, 0)
        self.assertEqual(sum("Cannot write" in e["log_format"] for e in logs), 1)
        self.assertEqual(sum("again" in e["log_format"] for e in logs), 1)

    def test_unencodable_event_dropped_not_raised(self) -> None:
        sink = self.sink(self.mktemp())
        bad = event(0)
        bad["truth"]["self"] = bad
        sink.emit(bad)
        self.assertEqual((sink.emitted, sink.dropped), (1, 1))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_event_snapshot_at_emit(self) -> None:
        path = self.mktemp()
        sink = self.sink(path, cls=GatedSink)
        e = event(0)
        sink.emit(e)
        e["truth"]["rows"] = 99  # the caller reuses its dict
        sink.gate.set()
        self.close(sink)
        self.assertEqual(self.lines(path)[0]["truth"]["rows"], 1)


class MemoryAndFanOutSinkTests(SynchronousTestCase):
    def test_memory_sink_keeps_the_last_events(self) -> None:
        sink = MemorySink(max_events=2)
        verifyObject(IEventSink, sink)
        for n in range(3):
            sink.emit(event(n, kind="noise" if n else "tag_mismatch"))
        self.assertEqual([e["seq"] for e in sink.events], [1, 2])
        self.assertEqual(len(sink.by_kind("noise")), 2)
        self.assertIsNone(self.successResultOf(sink.close()))
        sink.emit(event(4))
        self.assertEqual((sink.emitted, sink.dropped), (4, 1))

    def test_fan_out(self) -> None:
        class Broken:
            def emit(self, event: dict) -> None:
                raise RuntimeError("broken sink")

            def close(self) -> Deferred[None]:
                return Deferred()

        one, two, broken = MemorySink(), MemorySink(), Broken()
        fan = FanOutSink(one, broken, two)
        verifyObject(IEventSink, fan)
        fan.emit(event(1))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual([len(one.events), len(two.events)], [1, 1])
        d = fan.close()
        self.assertNoResult(d)  # waits for every sink
        self.assertTrue(one.closed and two.closed)

    def test_fan_out_close_fires_after_all(self) -> None:
        self.assertIsNone(self.successResultOf(FanOutSink(MemorySink(), MemorySink()).close()))

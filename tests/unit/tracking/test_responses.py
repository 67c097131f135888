"""ResponseTracker: one backend's stream of framed messages -> statement results and sync points.

Every case runs on both implementations, the Python reference and the C tracker (its
classes are skipped when the extension was not built)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from twinkly.tracking import responses as r
from twinkly.wire import backend as b
from twinkly.wire.framing import MessageFramer
from twinkly.wire.frontend import encode

COLUMNS = b.RowDescription((b.Column("id", type_oid=23, type_size=4), b.Column("name")))
PARSE_OK, BIND_OK, CLOSE_OK = b.ParseComplete(), b.BindComplete(), b.CloseComplete()


def row(*values: bytes | None) -> b.DataRow:
    return b.DataRow(values)


def done(tag: str) -> b.CommandComplete:
    return b.CommandComplete(tag)


def ready(status: str = "I") -> b.ReadyForQuery:
    return b.ReadyForQuery(status)


def error(sqlstate: str = "42P01", message: str = "boom") -> b.ErrorResponse:
    return b.ErrorResponse.make("ERROR", sqlstate, message)


def framed(*messages: object) -> list[tuple[int, bytes]]:
    return MessageFramer().feed(b"".join(encode(m) for m in messages))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Implementation:
    """Which tracker a case runs on: ``impl`` is ``responses.PYTHON`` or ``responses.C``."""

    impl: Any

    def tracker_for(self, emit: Callable[[Any], None], clock: Callable[[], float]) -> Any:
        return self.impl.ResponseTracker(emit, clock)

    def is_result(self, item: object) -> bool:
        return isinstance(item, self.impl.StatementResult)


class TrackerCases(Implementation):
    def setUp(self) -> None:
        self.clock = FakeClock()
        self.items: list[r.Item] = []
        self.tracker = self.tracker_for(self.items.append, self.clock)
        self.framer = MessageFramer()
        self.seq = 0

    def expect(self, *kinds: str) -> None:
        for kind in kinds:
            self.seq += 1
            self.tracker.expect(kind, self.clock.now, self.seq)

    def feed(self, *messages: object) -> None:
        """Raw bytes through ``receive``, cut at awkward places (inside headers,
        inside payloads), as a socket may deliver them."""
        data = b"".join(encode(m) for m in messages)
        for start in range(0, len(data), 7):
            self.tracker.receive(self.framer, data[start : start + 7])

    def shape(self) -> list[tuple]:
        """What was emitted, in a compact comparable form."""
        out: list[tuple] = []
        for item in self.items:
            if isinstance(item, self.impl.SyncPoint):
                out.append(("sync", item.status))
            else:
                what = item.command_tag if item.error is None else f"ERROR {item.sqlstate}"
                out.append((item.request, item.rows, what))
        return out

    def results(self) -> list[Any]:
        return [i for i in self.items if self.is_result(i)]


class SimpleQueryCases(TrackerCases):
    def test_one_select(self) -> None:
        self.expect(r.QUERY)
        self.feed(COLUMNS, row(b"1", b"a"), row(b"2", None), done("SELECT 2"), ready("I"))
        self.assertEqual(self.shape(), [(r.QUERY, 2, "SELECT 2"), ("sync", "I")])
        [result] = self.results()
        self.assertEqual(result.tag, b"SELECT 2")
        self.assertEqual(result.columns, COLUMNS.payload())
        self.assertIsNone(result.error)
        self.assertEqual(self.tracker.status, "I")
        self.assertEqual(self.tracker.owed, 0)
        self.assertIsNone(self.tracker.lost_track)

    def test_results_appear_as_each_statement_ends(self) -> None:
        self.expect(r.QUERY)
        self.feed(COLUMNS, row(b"1", b"a"))
        self.assertEqual(self.items, [])
        self.feed(done("SELECT 1"))
        self.assertEqual(self.shape(), [(r.QUERY, 1, "SELECT 1")])
        self.feed(ready("T"))
        self.assertEqual(self.shape()[-1], ("sync", "T"))
        self.assertEqual(self.tracker.status, "T")

    def test_multi_statement_with_empty_query_and_error(self) -> None:
        self.expect(r.QUERY, r.QUERY)
        self.feed(
            COLUMNS,
            row(b"1", b"a"),
            done("SELECT 1"),
            b.EmptyQueryResponse(),
            done("INSERT 0 3"),
            error("22012", "division by zero"),
            ready("E"),
            done("ROLLBACK"),
            ready("I"),
        )
        self.assertEqual(
            self.shape(),
            [
                (r.QUERY, 1, "SELECT 1"),
                (r.QUERY, 0, None),
                (r.QUERY, 0, "INSERT 0 3"),
                (r.QUERY, 0, "ERROR 22012"),
                ("sync", "E"),
                (r.QUERY, 0, "ROLLBACK"),
                ("sync", "I"),
            ],
        )
        results = self.results()
        self.assertTrue(results[1].empty)
        self.assertFalse(results[0].empty)
        self.assertEqual(results[3].error_message, "division by zero")
        self.assertIsNone(results[0].sqlstate)
        self.assertIsNone(self.tracker.lost_track)

    def test_elapsed_times_from_the_clock(self) -> None:
        self.clock.now = 10.0
        self.expect(r.QUERY)
        self.clock.now = 12.5
        self.feed(COLUMNS, row(b"1", b"a"), done("SELECT 1"))
        self.clock.now = 13.0
        self.feed(done("UPDATE 1"))
        self.clock.now = 13.25
        self.feed(ready())
        first, second, sync = self.items
        self.assertEqual((first.started, first.finished, first.elapsed), (10.0, 12.5, 2.5))
        # the next statement of the same query string starts when the previous ends
        self.assertEqual((second.started, second.finished, second.elapsed), (12.5, 13.0, 0.5))
        self.assertEqual(sync.time, 13.25)

    def test_function_call(self) -> None:
        self.clock.now = 1.0
        self.expect(r.FUNCTION_CALL)
        self.clock.now = 3.0
        self.feed(b.FunctionCallResponse(b"42"), ready())
        self.assertEqual(self.shape(), [(r.FUNCTION_CALL, 1, None), ("sync", "I")])
        self.assertEqual(self.items[0].elapsed, 2.0)
        other = self.tracker_for(self.items.append, self.clock)
        other.expect(r.FUNCTION_CALL, 0.0)
        other.feed(framed(b.FunctionCallResponse(b"43"), ready()))
        self.assertNotEqual(self.items[0].digest, self.items[2].digest)

    def test_async_messages_are_not_results(self) -> None:
        notice = b.NoticeResponse.make("NOTICE", "00000", "hello")
        note = b.NotificationResponse(7, "ch", "x")
        self.feed(notice, note, b.ParameterStatus("TimeZone", "UTC"))  # nothing owed yet
        self.expect(r.QUERY)
        self.feed(
            notice,
            COLUMNS,
            note,
            row(b"1", b"a"),
            b.ParameterStatus("application_name", "psql"),
            done("SELECT 1"),
            notice,
            b.ParameterStatus("TimeZone", "Europe/Paris"),
            ready(),
            note,
        )
        self.assertEqual(self.shape(), [(r.QUERY, 1, "SELECT 1"), ("sync", "I")])
        self.assertEqual(
            self.tracker.parameters,
            {b"TimeZone": b"Europe/Paris", b"application_name": b"psql"},
        )
        self.assertIsNone(self.tracker.lost_track)

    def test_empty_parameter_value(self) -> None:
        self.feed(b.ParameterStatus("search_path", ""))
        self.assertEqual(self.tracker.parameters, {b"search_path": b""})

    def test_ready_with_nothing_owed_loses_track(self) -> None:
        self.feed(ready())
        self.assertIsNotNone(self.tracker.lost_track)
        self.assertIn("nothing owed", self.tracker.lost_track)
        self.assertEqual(self.items, [])

    def test_unexpected_message_with_nothing_owed_loses_track(self) -> None:
        self.feed(done("SELECT 1"))
        self.assertIn("nothing owed", self.tracker.lost_track or "")

    def test_fatal_error_with_nothing_owed_is_not_lost_track(self) -> None:
        self.feed(b.ErrorResponse.make("FATAL", "57P01", "terminating connection"))
        self.assertIsNone(self.tracker.lost_track)
        self.assertEqual(self.items, [])

    def test_first_reason_is_kept(self) -> None:
        self.feed(ready())
        first = self.tracker.lost_track
        self.feed(done("X"))
        self.assertEqual(self.tracker.lost_track, first)


class ExtendedProtocolCases(TrackerCases):
    def test_parse_bind_describe_execute_sync(self) -> None:
        self.expect(r.PARSE, r.BIND, r.DESCRIBE_PORTAL, r.EXECUTE, r.SYNC)
        self.assertEqual(self.tracker.owed, 5)
        self.feed(PARSE_OK, BIND_OK, COLUMNS, row(b"1", b"a"), row(b"2", b"b"), done("SELECT 2"))
        self.assertEqual(self.tracker.owed, 1)
        self.feed(ready())
        self.assertEqual(
            self.shape(),
            [
                (r.PARSE, 0, None),
                (r.BIND, 0, None),
                (r.DESCRIBE_PORTAL, 0, None),
                (r.EXECUTE, 2, "SELECT 2"),
                ("sync", "I"),
            ],
        )
        self.assertEqual(self.results()[2].columns, COLUMNS.payload())
        self.assertIsNone(self.results()[3].columns)
        self.assertEqual(self.tracker.owed, 0)

    def test_describe_statement_with_rows(self) -> None:
        self.expect(r.PARSE, r.DESCRIBE_STATEMENT, r.SYNC)
        params = b.ParameterDescription((23, 25))
        self.feed(PARSE_OK, params, COLUMNS, ready())
        describe = self.results()[1]
        self.assertEqual(describe.request, r.DESCRIBE_STATEMENT)
        self.assertEqual(describe.parameter_types, params.payload())
        self.assertEqual(describe.columns, COLUMNS.payload())
        self.assertEqual(self.shape()[-1], ("sync", "I"))

    def test_describe_statement_no_data_and_close(self) -> None:
        self.expect(r.PARSE, r.DESCRIBE_STATEMENT, r.CLOSE, r.SYNC)
        self.feed(PARSE_OK, b.ParameterDescription(()), b.NoData(), CLOSE_OK, ready())
        self.assertEqual(
            [i.request for i in self.results()], [r.PARSE, r.DESCRIBE_STATEMENT, r.CLOSE]
        )
        self.assertIsNone(self.results()[1].columns)
        self.assertEqual(self.results()[1].parameter_types, b"\x00\x00")
        self.assertEqual(len(self.items), 4)

    def test_portal_suspended_then_second_execute(self) -> None:
        self.expect(r.PARSE, r.BIND, r.EXECUTE, r.EXECUTE, r.SYNC)
        self.feed(PARSE_OK, BIND_OK, row(b"1", b"a"), row(b"2", b"b"), b.PortalSuspended())
        self.feed(row(b"3", b"c"), done("SELECT 1"), ready("T"))
        self.assertEqual(
            self.shape()[2:], [(r.EXECUTE, 2, None), (r.EXECUTE, 1, "SELECT 1"), ("sync", "T")]
        )
        first, second = self.results()[2:]
        self.assertTrue(first.suspended)
        self.assertFalse(second.suspended)

    def test_error_at_bind_skips_to_sync(self) -> None:
        self.expect(r.PARSE, r.BIND, r.EXECUTE, r.PARSE, r.BIND, r.EXECUTE, r.SYNC)
        self.feed(PARSE_OK, error("22P02", "invalid input syntax"))
        self.assertEqual(self.tracker.owed, 1)  # only the Sync is still owed
        self.feed(ready("I"))
        self.assertEqual(
            self.shape(), [(r.PARSE, 0, None), (r.BIND, 0, "ERROR 22P02"), ("sync", "I")]
        )
        self.assertIsNone(self.tracker.lost_track)
        # after the sync, the next pipeline is tracked normally
        self.expect(r.PARSE, r.SYNC)
        self.feed(PARSE_OK, ready())
        self.assertEqual(self.shape()[-2:], [(r.PARSE, 0, None), ("sync", "I")])

    def test_error_before_sync_was_sent_drops_later_pushes(self) -> None:
        self.expect(r.PARSE, r.BIND, r.EXECUTE)
        self.feed(error("42601", "syntax error"))
        self.assertEqual(self.tracker.owed, 0)
        # the backend ignores these until Sync, and so does the tracker
        self.expect(r.BIND, r.EXECUTE, r.QUERY, r.DESCRIBE_PORTAL)
        self.assertEqual(self.tracker.owed, 0)
        self.expect(r.SYNC)
        self.assertEqual(self.tracker.owed, 1)
        self.expect(r.PARSE)  # after the Sync: owed again
        self.assertEqual(self.tracker.owed, 2)
        self.feed(ready(), PARSE_OK)
        self.assertEqual(
            self.shape(), [(r.PARSE, 0, "ERROR 42601"), ("sync", "I"), (r.PARSE, 0, None)]
        )
        self.assertIsNone(self.tracker.lost_track)

    def test_error_during_execute_keeps_partial_rows(self) -> None:
        self.expect(r.BIND, r.EXECUTE, r.SYNC, r.QUERY)
        self.feed(BIND_OK, row(b"1", b"a"), error("22012"), ready("I"))
        self.feed(done("SET"), ready())
        self.assertEqual(
            self.shape(),
            [
                (r.BIND, 0, None),
                (r.EXECUTE, 1, "ERROR 22012"),
                ("sync", "I"),
                (r.QUERY, 0, "SET"),
                ("sync", "I"),
            ],
        )

    def test_error_at_sync_commit(self) -> None:
        self.expect(r.EXECUTE, r.SYNC)
        self.feed(done("INSERT 0 1"), error("23505"), ready("I"))
        self.assertEqual(
            self.shape(),
            [(r.EXECUTE, 0, "INSERT 0 1"), (r.SYNC, 0, "ERROR 23505"), ("sync", "I")],
        )

    def test_ready_while_owing_a_non_sync_loses_track(self) -> None:
        self.expect(r.PARSE)
        self.feed(ready())
        self.assertIn("owing P", self.tracker.lost_track or "")
        self.assertEqual(self.tracker.owed, 0)

    def test_expectation_for_client_messages(self) -> None:
        cases = [
            (b"Q", b"select 1\x00", r.QUERY),
            (b"D", b"Sname\x00", r.DESCRIBE_STATEMENT),
            (b"D", b"P\x00", r.DESCRIBE_PORTAL),
            (b"S", b"", r.SYNC),
            (b"H", b"", None),  # Flush
            (b"d", b"data", None),  # CopyData
            (b"X", b"", None),
        ]
        for type_byte, payload, kind in cases:
            self.assertEqual(r.expectation_for(type_byte[0], payload), kind, type_byte)


class CopyCases(TrackerCases):
    def test_copy_from_stdin(self) -> None:
        calls: list[bool] = []
        self.tracker.on_copy_in = lambda: calls.append(self.tracker.copy_in)
        self.expect(r.QUERY)
        self.feed(b.CopyInResponse(0, (0, 0)))
        self.assertTrue(self.tracker.copy_in)
        self.assertEqual(calls, [True])
        self.assertEqual(self.items, [])
        self.feed(done("COPY 3"))
        self.assertFalse(self.tracker.copy_in)
        self.feed(ready())
        self.assertEqual(self.shape(), [(r.QUERY, 0, "COPY 3"), ("sync", "I")])
        self.assertEqual(self.results()[0].copy, "in")

    def test_copy_from_stdin_failed(self) -> None:
        self.expect(r.QUERY)
        self.feed(b.CopyInResponse(0, (0,)))
        self.assertTrue(self.tracker.copy_in)
        self.feed(error("57014", "COPY from stdin failed"), ready())
        self.assertFalse(self.tracker.copy_in)
        self.assertEqual(self.shape(), [(r.QUERY, 0, "ERROR 57014"), ("sync", "I")])

    def test_copy_from_stdin_in_extended_protocol_as_libpq_sends_it(self) -> None:
        # PostgreSQL ignores a Sync received during COPY FROM STDIN; libpq sends one
        # right after Execute and another after CopyDone: one ReadyForQuery for two Syncs.
        self.expect(r.PARSE, r.BIND, r.DESCRIBE_PORTAL, r.EXECUTE, r.SYNC)
        self.feed(PARSE_OK, BIND_OK, b.NoData(), b.CopyInResponse(0, (0,)))
        self.assertTrue(self.tracker.copy_in)
        self.expect(r.COPY_END, r.SYNC)  # the client's CopyData..., CopyDone, Sync
        self.feed(done("COPY 3"), ready())
        self.expect(r.PARSE, r.BIND, r.EXECUTE, r.SYNC)
        self.feed(PARSE_OK, BIND_OK, row(b"1", b"a"), done("SELECT 1"), ready())
        self.assertIsNone(self.tracker.lost_track)
        self.assertEqual(self.tracker.owed, 0)
        self.assertEqual(
            self.shape()[3:],
            [
                (r.EXECUTE, 0, "COPY 3"),
                ("sync", "I"),
                (r.PARSE, 0, None),
                (r.BIND, 0, None),
                (r.EXECUTE, 1, "SELECT 1"),
                ("sync", "I"),
            ],
        )

    def test_copy_to_stdout(self) -> None:
        self.expect(r.QUERY)
        self.feed(
            b.CopyOutResponse(0, (0, 0)),
            b.CopyData(b"1\ta\n"),
            b.CopyData(b"2\tb\n"),
            b.CopyData(b"3\tc\n"),
            b.CopyDone(),
            done("COPY 3"),
            ready(),
        )
        self.assertEqual(self.shape(), [(r.QUERY, 3, "COPY 3"), ("sync", "I")])
        self.assertEqual(self.results()[0].copy, "out")
        self.assertFalse(self.tracker.copy_in)

    def test_copy_to_stdout_in_extended_protocol(self) -> None:
        self.expect(r.BIND, r.EXECUTE, r.SYNC)
        self.feed(BIND_OK, b.CopyOutResponse(0, ()), b.CopyData(b"x\n"), b.CopyDone())
        self.feed(done("COPY 1"), ready())
        self.assertEqual(self.shape()[1:], [(r.EXECUTE, 1, "COPY 1"), ("sync", "I")])


class DigestCases(Implementation):
    def run_query(self, rows: list[b.DataRow]) -> Any:
        items: list[r.Item] = []
        tracker = self.tracker_for(items.append, FakeClock())
        tracker.expect(r.QUERY, 0.0)
        tracker.feed(framed(COLUMNS, *rows, done(f"SELECT {len(rows)}"), ready()))
        result = items[0]
        assert self.is_result(result)
        return result

    def test_same_rows_in_another_order(self) -> None:
        rows = [row(str(i).encode(), b"x" * i) for i in range(50)]
        forward = self.run_query(rows)
        backward = self.run_query(rows[::-1])
        self.assertEqual(forward.rows, 50)
        self.assertEqual(forward.digest, backward.digest)
        self.assertTrue(0 <= forward.digest < 2**64)

    def test_execute_without_header_digests_like_a_query(self) -> None:
        rows = [row(b"1", b"a"), row(b"2", b"b")]
        items: list[r.Item] = []
        tracker = self.tracker_for(items.append, FakeClock())
        tracker.expect(r.EXECUTE, 0.0)
        tracker.feed(framed(*rows, done("SELECT 2")))
        self.assertEqual(items[0].digest, self.run_query(rows[::-1]).digest)

    def test_different_rows(self) -> None:
        base = self.run_query([row(b"1", b"a"), row(b"2", b"b")])
        cases = [
            [row(b"1", b"a"), row(b"2", b"c")],
            [row(b"1", b"a"), row(b"2", None)],
            [row(b"1", b"a"), row(b"1", b"a")],
            [row(b"1", b"a")],
            [row(b"1", b"a"), row(b"2", b"b"), row(b"2", b"b")],
        ]
        for rows in cases:
            other = self.run_query(rows)
            self.assertNotEqual((other.rows, other.digest), (base.rows, base.digest), rows)
            self.assertNotEqual(other.digest, base.digest, rows)


class ReceiveCases(TrackerCases):
    """``receive``: the fused framing and row counting of the hot path."""

    def test_one_byte_at_a_time_equals_one_read(self) -> None:
        rows = [row(str(i).encode(), b"x" * i) for i in range(50)]
        data = b"".join(encode(m) for m in (COLUMNS, *rows, done("SELECT 50"), ready()))
        self.expect(r.QUERY)
        for i in range(len(data)):
            self.tracker.receive(self.framer, data[i : i + 1])
        other_items: list[r.Item] = []
        other = self.tracker_for(other_items.append, self.clock)
        other.expect(r.QUERY, 0.0, 1)
        other.receive(MessageFramer(), data)
        self.assertEqual(self.shape(), [(r.QUERY, 50, "SELECT 50"), ("sync", "I")])
        self.assertEqual(self.results()[0].digest, other_items[0].digest)
        self.assertEqual(self.framer.buffered, 0)

    def test_length_limit(self) -> None:
        from twinkly.wire.framing import ProtocolViolation

        self.expect(r.QUERY)
        with self.assertRaises(ProtocolViolation):
            self.tracker.receive(MessageFramer(1024), b"D\x00\x01\x00\x00")


class TimingCases(TrackerCases):
    """What a result's time means: the server's work on it, or nothing (``timed``)."""

    def results(self) -> list[Any]:
        return [i for i in self.items if self.is_result(i)]

    def test_a_statement_queued_behind_another_starts_when_the_backend_is_free(self) -> None:
        self.expect(r.QUERY)
        self.clock.now = 0.002
        self.expect(r.QUERY)  # sent while the first still runs
        self.clock.now = 1.0
        self.feed(done("SELECT 0"), ready())
        self.clock.now = 1.01
        self.feed(done("SELECT 0"), ready())
        first, second = self.results()
        self.assertEqual((first.elapsed, first.timed), (1.0, True))
        self.assertEqual(second.started, 1.0)
        self.assertAlmostEqual(second.elapsed, 0.01)

    def test_an_extended_statement_is_timed_from_when_it_was_sent(self) -> None:
        self.clock.now = 5.0
        self.expect(r.PARSE, r.BIND, r.DESCRIBE_PORTAL, r.EXECUTE, r.SYNC)
        self.clock.now = 5.25  # the server flushes everything at the Sync
        self.feed(PARSE_OK, BIND_OK, b.NoData(), done("INSERT 0 1"), ready())
        execute = self.results()[-1]
        self.assertEqual(execute.request, r.EXECUTE)
        self.assertEqual((execute.elapsed, execute.timed), (0.25, True))

    def test_executes_answered_in_one_flush_are_not_timed(self) -> None:
        self.expect(r.BIND, r.EXECUTE, r.BIND, r.EXECUTE, r.SYNC)
        self.clock.now = 0.5
        self.feed(BIND_OK, done("SELECT 0"), BIND_OK, done("SELECT 0"), ready())
        executes = [x for x in self.results() if x.request == r.EXECUTE]
        self.assertEqual([x.timed for x in executes], [False, False])
        # The next group, alone before its Sync, is timed again.
        self.expect(r.BIND, r.EXECUTE, r.SYNC)
        self.clock.now = 0.7
        self.feed(BIND_OK, done("SELECT 0"), ready())
        self.assertTrue(self.results()[-1].timed)

    def test_a_pause_during_a_result_spoils_its_time(self) -> None:
        self.expect(r.QUERY)
        self.clock.now = 0.1
        self.tracker.paused()
        self.clock.now = 0.4
        self.tracker.resumed()
        self.clock.now = 0.5
        self.feed(done("SELECT 0"), ready())
        self.expect(r.QUERY)  # sent after the pause: unaffected
        self.clock.now = 0.6
        self.feed(done("SELECT 0"), ready())
        self.assertEqual([x.timed for x in self.results()], [False, True])

    def test_a_result_finishing_while_paused_is_not_timed(self) -> None:
        self.expect(r.QUERY)
        self.tracker.paused()
        self.clock.now = 0.3
        self.feed(done("SELECT 0"), ready())  # bytes read before the pause took effect
        self.assertFalse(self.results()[0].timed)

    def test_held_back_messages_start_when_they_are_sent(self) -> None:
        self.expect(r.QUERY)
        self.clock.now = 2.0
        self.tracker.sent(2.0)  # released from behind a possible COPY only now
        self.clock.now = 2.1
        self.feed(done("SELECT 0"), ready())
        self.assertAlmostEqual(self.results()[0].elapsed, 0.1)

    def test_a_pause_over_before_the_statement_starts_does_not_count(self) -> None:
        self.expect(r.QUERY)
        self.tracker.paused()
        self.clock.now = 0.2
        self.tracker.resumed()
        self.clock.now = 0.3
        self.feed(done("SELECT 0"), ready())  # spoiled: the pause fell in its time
        self.expect(r.QUERY)  # queued earlier, starts at the ReadyForQuery above
        self.clock.now = 0.35
        self.feed(done("SELECT 0"), ready())
        first, second = self.results()
        self.assertEqual((first.timed, second.timed), (False, True))
        self.assertAlmostEqual(second.elapsed, 0.05)

    def test_an_execute_without_sync_and_the_query_after_it_share_a_flush(self) -> None:
        self.expect(r.BIND, r.EXECUTE, r.QUERY)
        self.clock.now = 0.4
        self.feed(BIND_OK, done("SELECT 0"), done("SELECT 0"), ready())
        execute, query = (x for x in self.results() if x.request != r.BIND)
        self.assertEqual((execute.timed, query.timed), (False, False))


class ImplementationParityTests(SynchronousTestCase):
    """``receive`` gives the same results, digests and samples whichever implementation
    tracks (the C tracker, or the Python one counting rows with C or Python)."""

    def track(self, tracker_impl: Any, data: bytes, chunk: int, sample_rows: int) -> list[tuple]:
        items: list[r.Item] = []
        tracker = tracker_impl.ResponseTracker(items.append, FakeClock())
        tracker.sample_rows = sample_rows
        tracker.expect(r.QUERY, 0.0, 1, ("select", None, ()))
        framer = MessageFramer()
        for start in range(0, len(data), chunk):
            tracker.receive(framer, data[start : start + chunk])
        return [
            (i.rows, i.digest, i.sample, i.tag, i.end) if hasattr(i, "rows") else (i.status, i.end)
            for i in items
        ]

    def test_c_and_python_agree(self) -> None:
        from twinkly.tracking import python_tracker
        from twinkly.wire import accel

        if accel.C is None or r.C is None:
            raise self.skipTest("the C extensions were not built")
        rows = [row(str(i).encode(), b"x" * (i % 13)) for i in range(300)]
        data = b"".join(
            encode(m) for m in (COLUMNS, *rows, done("SELECT 300"), COLUMNS, done("SELECT 0"))
        ) + encode(ready())
        for chunk in (1, 7, 64, 1000, len(data)):
            for sample_rows in (0, 10, 1000):
                self.patch(python_tracker, "_scan_rows", accel.PYTHON.scan_rows)
                python = self.track(r.PYTHON, data, chunk, sample_rows)
                self.patch(python_tracker, "_scan_rows", accel.C.scan_rows)
                self.assertEqual(self.track(r.PYTHON, data, chunk, sample_rows), python)
                self.assertEqual(self.track(r.C, data, chunk, sample_rows), python)
                digest = sum(hash(encode(m)[5:]) for m in rows) & ((1 << 64) - 1)
                self.assertEqual(python[0][:2], (300, digest))


def _on_both(cases: type) -> tuple[type, type]:
    """A test class per implementation of ``cases``."""
    name = cases.__name__.removesuffix("Cases")
    python = type(f"Python{name}Tests", (cases, SynchronousTestCase), {"impl": r.PYTHON})
    c_attrs: dict[str, Any] = {"impl": r.C}
    if r.C is None:
        c_attrs["skip"] = "the C extension twinkly.tracking._tracker was not built"
    return python, type(f"C{name}Tests", (cases, SynchronousTestCase), c_attrs)


PythonSimpleQueryTests, CSimpleQueryTests = _on_both(SimpleQueryCases)
PythonExtendedProtocolTests, CExtendedProtocolTests = _on_both(ExtendedProtocolCases)
PythonCopyTests, CCopyTests = _on_both(CopyCases)
PythonDigestTests, CDigestTests = _on_both(DigestCases)
PythonReceiveTests, CReceiveTests = _on_both(ReceiveCases)
PythonTimingTests, CTimingTests = _on_both(TimingCases)


class TrackerSelectionTests(SynchronousTestCase):
    """The C tracker runs when the C accelerator does; otherwise the Python one."""

    def implementation(self, prelude: str = "", **env: str) -> str:
        import os
        import subprocess
        import sys
        from pathlib import Path

        environment = {k: v for k, v in os.environ.items() if k != "TWINKLY_PURE_PYTHON"}
        environment.update(env, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
        code = prelude + (
            "from twinkly.tracking import responses as r\n"
            "print(r.IMPLEMENTATION, r.ResponseTracker.__module__, r.StatementResult.__name__)"
        )
        return subprocess.run(
            [sys.executable, "-c", code], env=environment, capture_output=True, text=True,
            check=True, timeout=60,
        ).stdout.strip()  # fmt: skip

    def test_pure_python_when_forced(self) -> None:
        self.assertEqual(
            self.implementation(TWINKLY_PURE_PYTHON="1"),
            "python twinkly.tracking.python_tracker StatementResult",
        )

    def test_pure_python_without_the_extension(self) -> None:
        block = (
            "import sys\n"
            "class NoTracker:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'twinkly.tracking._tracker':\n"
            "            raise ImportError('not built')\n"
            "sys.meta_path.insert(0, NoTracker())\n"
        )
        self.assertEqual(
            self.implementation(block), "python twinkly.tracking.python_tracker StatementResult"
        )

    def test_c_when_built(self) -> None:
        if r.C is None:
            raise self.skipTest("the C extension twinkly.tracking._tracker was not built")
        self.assertEqual(self.implementation(), "c twinkly.tracking._tracker CStatementResult")

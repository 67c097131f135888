"""The admin console, sans-IO: encoded client messages in, decoded server messages out."""

from __future__ import annotations

import datetime

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twinkly.config.schema import ConfigError
from twinkly.ops.admin import AdminConsole, split_statements
from twinkly.ops.status import IStatus
from twinkly.wire import backend as b
from twinkly.wire import frontend as f
from twinkly.wire.framing import MessageFramer

STARTED = 1714566896.5  # 2024-05-01 12:34:56.5 UTC
TYPE_SIZES = {25: -1, 20: 8, 16: 1, 701: 8, 1184: 8}  # as PostgreSQL describes them


def event(n: int, kind: str, **fields: object) -> dict:
    base = {
        "id": f"01HX{n:022d}",
        "time": f"2024-05-01T12:00:{n % 60:02d}.250Z",
        "kind": kind,
        "fingerprint": f"{n:016x}",
        "statement": f"select {n}",
        "reason": f"reason {n}",
    }
    base.update(fields)
    return base


@implementer(IStatus)
class FakeStatus:
    """Canned answers, and a record of what the console asked."""

    started = STARTED

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.muted: set[str] = set()
        self.traceable = {42}
        self.reload_result: list | Exception = []
        self.broken: Exception | None = None
        self.event_list: list[dict] = []

    def totals(self) -> dict:
        if self.broken:
            raise self.broken
        return {
            "sessions": 3,
            "statements": 120,
            "outcomes": {"matched": 100, "mismatched": 7, "noise": 2},
            "events": {"result_mismatch": 5, "noise": 2},
            "backends": {"truth": "pg15", "target": "pg18"},
            "uptime_s": 42.9,
        }

    def events(self, kind: str | None = None, limit: int = 50, before: str | None = None) -> list:
        self.calls.append(("events", kind, limit, before))
        return self.event_list[:limit]

    def fingerprints(self) -> list:
        return [
            {
                "fingerprint": "50fde20626009aba",
                "statement": "SELECT $1",
                "executions": 10,
                "mismatches": 2,
                "muted": True,
                "truth": {"count": 10, "p50_ms": 1.5, "p95_ms": 3.0, "max_ms": 4.0},
                "target": {"count": 10, "p50_ms": 3.0, "p95_ms": 6.0, "max_ms": 8.0},
                "p50_ratio": 2.0,
            },
            {
                "fingerprint": "00000000000000ff",
                "statement": "<unparsed>",
                "executions": 1,
                "mismatches": 0,
                "muted": False,
                "truth": {"count": 0, "p50_ms": None, "p95_ms": None, "max_ms": None},
                "target": {"count": 1, "p50_ms": 0.25, "p95_ms": 0.25, "max_ms": 0.25},
                "p50_ratio": None,
            },
        ]

    def sessions(self) -> list:
        return [
            {
                "id": 7,
                "client": "127.0.0.1:5555",
                "user": "alice",
                "database": "shop",
                "started": STARTED,
                "statements": 12,
                "status": "T",
            }
        ]

    def config_items(self) -> list:
        return [("listen.port", "6432"), ("truth.password", "***")]

    def mute(self, fingerprint: str) -> bool:
        self.calls.append(("mute", fingerprint))
        if fingerprint in self.muted:
            return False
        self.muted.add(fingerprint)
        return True

    def unmute(self, fingerprint: str) -> bool:
        self.calls.append(("unmute", fingerprint))
        if fingerprint not in self.muted:
            return False
        self.muted.discard(fingerprint)
        return True

    def trace(self, session_id: int, on: bool) -> str:
        self.calls.append(("trace", (session_id, on)))
        if session_id not in self.traceable:
            raise KeyError(f"no session {session_id}")
        return f"tracing {session_id}" if on else f"untraced {session_id}"

    def reset_timings(self) -> int:
        self.calls.append(("reset_timings", None))
        return 3

    def reload(self) -> list:
        if isinstance(self.reload_result, Exception):
            raise self.reload_result
        return self.reload_result

    def ready(self):
        raise NotImplementedError


def decode_all(data: bytes) -> list:
    framer = MessageFramer()
    messages = [b.decode_backend(t, p) for t, p in framer.feed(data)]
    assert framer.buffered == 0, "a partial message was left over"
    return messages


class ConsoleTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.status = FakeStatus()
        self.console = AdminConsole(self.status)

    def send(self, *messages: object) -> tuple[list, bool]:
        """Feed client messages through a framer, as the connection would; return the
        decoded answers and whether the console asked to close."""
        framer = MessageFramer()
        out, close = b"", False
        for type_byte, payload in framer.feed(b"".join(f.encode(m) for m in messages)):
            data, close = self.console.handle(type_byte, payload)
            out += data
        return decode_all(out), close

    def query(self, sql: str) -> list:
        answer, close = self.send(f.Query(sql))
        self.assertFalse(close)
        self.assertEqual(answer[-1], b.ReadyForQuery("I"))
        self.assertEqual(sum(isinstance(m, b.ReadyForQuery) for m in answer), 1)
        return answer[:-1]

    def table(self, sql: str) -> tuple[list[tuple[str, int]], list[tuple]]:
        """A one-statement SHOW: its (name, type oid) columns and its rows as text."""
        answer = self.query(sql)
        self.assertIsInstance(answer[0], b.RowDescription, answer)
        self.assertEqual(answer[-1], b.CommandComplete("SHOW"))
        columns = [(c.name, c.type_oid) for c in answer[0].columns]
        for c in answer[0].columns:
            self.assertEqual((c.format, c.type_size), (0, TYPE_SIZES[c.type_oid]), c)
        rows = []
        for row in answer[1:-1]:
            self.assertIsInstance(row, b.DataRow)
            self.assertEqual(len(row.values), len(columns))
            rows.append(tuple(None if v is None else v.decode() for v in row.values))
        return columns, rows

    def error(self, message: object, sqlstate: str) -> str:
        self.assertIs(type(message), b.ErrorResponse, message)
        self.assertEqual(message.sqlstate, sqlstate, message.fields)
        self.assertEqual(message.severity, "ERROR")
        return message.message


class ShowTests(ConsoleTestCase):
    def test_fake_provides_istatus(self) -> None:
        self.assertTrue(verifyObject(IStatus, self.status))

    def test_stats(self) -> None:
        columns, rows = self.table("SHOW STATS")
        self.assertEqual(columns, [("name", 25), ("value", 20)])
        self.assertEqual(
            rows,
            [
                ("sessions", "3"),
                ("sessions_not_compared", "0"),
                ("statements", "120"),
                ("target_outages", "0"),
                ("outcomes.matched", "100"),
                ("outcomes.mismatched", "7"),
                ("outcomes.noise", "2"),
                ("events.result_mismatch", "5"),
                ("events.noise", "2"),
                ("uptime_s", "42"),
            ],
        )

    def test_sessions(self) -> None:
        columns, rows = self.table("show sessions")
        self.assertEqual(
            columns,
            [
                ("id", 20),
                ("client", 25),
                ("user", 25),
                ("database", 25),
                ("started", 1184),
                ("statements", 20),
                ("status", 25),
            ],
        )
        self.assertEqual(
            rows,
            [("7", "127.0.0.1:5555", "alice", "shop", "2024-05-01 12:34:56.500000+00", "12", "T")],
        )
        started = datetime.datetime.fromisoformat(rows[0][4])
        self.assertEqual(started.timestamp(), STARTED)

    def test_mismatches_filtered_and_capped(self) -> None:
        events = []
        for n in range(120):  # newest first: every other one is benign
            events.append(event(n, "noise" if n % 2 else "result_mismatch"))
        events[2] = event(2, "transaction_divergence", statement=None, reason=None)
        self.status.event_list = events
        columns, rows = self.table("SHOW MISMATCHES")
        self.assertEqual(self.status.calls, [("events", None, 200, None)])
        self.assertEqual(
            columns,
            [
                ("id", 25),
                ("time", 1184),
                ("kind", 25),
                ("fingerprint", 25),
                ("statement", 25),
                ("reason", 25),
            ],
        )
        self.assertEqual(len(rows), 50)
        self.assertEqual([r[0] for r in rows], [events[n]["id"] for n in range(0, 100, 2)])
        self.assertEqual(
            rows[0],
            (
                events[0]["id"],
                "2024-05-01 12:00:00.250000+00",
                "result_mismatch",
                "0000000000000000",
                "select 0",
                "reason 0",
            ),
        )
        self.assertEqual(rows[1][2:], ("transaction_divergence", f"{2:016x}", None, None))

    def test_mismatches_keep_every_mismatch_kind(self) -> None:
        kinds = ["result_mismatch", "column_mismatch", "tag_mismatch", "error_divergence"]
        kinds += ["transaction_divergence", "noise", "nondeterministic", "backend_unavailable"]
        self.status.event_list = [event(n, kind) for n, kind in enumerate(kinds)]
        _, rows = self.table("SHOW MISMATCHES")
        self.assertEqual([r[2] for r in rows], kinds[:5])

    def test_slow_statements_with_their_likely_cause(self) -> None:
        self.status.event_list = [
            event(
                1,
                "slow_query",
                ratio=40.5,
                truth={"elapsed_ms": 2.0},
                target={"elapsed_ms": 81.0},
                insights=[{"kind": "missing_index", "message": "no index on t(a) on pg18?"}],
            ),
            event(2, "slow_query", ratio=None, truth=None, target=None, insights=[]),
        ]
        columns, rows = self.table("show slow")
        self.assertEqual(self.status.calls, [("events", "slow_query", 50, None)])
        self.assertEqual(
            [name for name, _ in columns],
            [
                *("id", "time", "fingerprint", "statement", "ratio", "truth_ms", "target_ms"),
                "likely_cause",
            ],
        )
        self.assertEqual(rows[0][3:], ("select 1", "40.5", "2", "81", "no index on t(a) on pg18?"))
        self.assertEqual(rows[1][4:], (None, None, None, None))

    def test_fingerprints(self) -> None:
        columns, rows = self.table("SHOW FINGERPRINTS")
        self.assertEqual(
            columns,
            [
                ("fingerprint", 25),
                ("statement", 25),
                ("executions", 20),
                ("mismatches", 20),
                ("muted", 16),
                ("truth_p50_ms", 701),
                ("target_p50_ms", 701),
                ("p50_ratio", 701),
            ],
        )
        self.assertEqual(
            rows,
            [
                ("50fde20626009aba", "SELECT $1", "10", "2", "t", "1.5", "3", "2"),
                ("00000000000000ff", "<unparsed>", "1", "0", "f", None, "0.25", None),
            ],
        )

    def test_float_values_as_postgresql_writes_them(self) -> None:
        rows = self.status.fingerprints()
        rows[0]["p50_ratio"] = float("inf")
        rows[1]["p50_ratio"] = float("nan")
        rows[1]["truth"]["p50_ms"] = 2  # an int where a float8 is declared
        self.status.fingerprints = lambda: rows
        _, answer = self.table("SHOW FINGERPRINTS")
        self.assertEqual(answer[0][7], "Infinity")
        self.assertEqual((answer[1][5], answer[1][7]), ("2", "NaN"))  # as select 2::float8

    def test_config(self) -> None:
        columns, rows = self.table("SHOW CONFIG")
        self.assertEqual(columns, [("key", 25), ("value", 25)])
        self.assertEqual(rows, [("listen.port", "6432"), ("truth.password", "***")])

    def test_help_lists_every_command(self) -> None:
        columns, rows = self.table("SHOW HELP")
        self.assertEqual(columns, [("command", 25), ("description", 25)])
        commands = [r[0] for r in rows]
        for name in ("STATS", "SESSIONS", "MISMATCHES", "FINGERPRINTS", "CONFIG", "HELP"):
            self.assertIn(f"SHOW {name}", commands)
        self.assertIn("MUTE <fingerprint>", commands)
        self.assertIn("UNMUTE <fingerprint>", commands)
        self.assertIn("RELOAD", commands)
        self.assertEqual(self.table("help;")[1], rows)

    def test_case_whitespace_and_semicolons(self) -> None:
        expected = self.table("SHOW CONFIG")
        for sql in ("show config", "  Show\n  Config ;  ", "SHOW CONFIG;;", "\tshow\tCONFIG\t"):
            self.assertEqual(self.table(sql), expected, sql)

    def test_run_answers_one_statement_without_ready_for_query(self) -> None:
        answer = decode_all(self.console.run("show config; "))
        self.assertIsInstance(answer[0], b.RowDescription)
        self.assertEqual(len(answer), 4)
        self.assertEqual(answer[-1], b.CommandComplete("SHOW"))
        self.assertEqual(decode_all(self.console.run("RELOAD"))[-1], b.CommandComplete("RELOAD"))
        self.error(decode_all(self.console.run("select 1"))[0], "42601")


class QueryTests(ConsoleTestCase):
    def test_several_statements_answered_in_turn(self) -> None:
        answer = self.query("SHOW CONFIG; mute 'ABCdef01' ;; RELOAD")
        self.assertEqual(
            [type(m).__name__ for m in answer],
            [
                "RowDescription",
                "DataRow",
                "DataRow",
                "CommandComplete",
                "CommandComplete",
                "NoticeResponse",
                "CommandComplete",
            ],
        )
        self.assertEqual(answer[4], b.CommandComplete("MUTE"))
        self.assertEqual(answer[6], b.CommandComplete("RELOAD"))
        self.assertEqual(self.status.calls, [("mute", "abcdef01")])

    def test_an_error_skips_the_rest_of_the_query(self) -> None:
        answer = self.query("MUTE ab; BEGIN; MUTE cd")
        self.assertEqual(answer[0], b.CommandComplete("MUTE"))
        self.error(answer[1], "42601")
        self.assertEqual(len(answer), 2)
        self.assertEqual(self.status.calls, [("mute", "ab")])

    def test_empty_query(self) -> None:
        for sql in ("", "   ", " ; ;\n"):
            self.assertEqual(self.query(sql), [b.EmptyQueryResponse()], repr(sql))

    def test_split_statements_respects_quotes(self) -> None:
        self.assertEqual(
            split_statements("MUTE 'a;b'; SHOW \"x;y\";;  ; it''s; 'don''t;stop'"),
            ["MUTE 'a;b'", 'SHOW "x;y"', "it''s", "'don''t;stop'"],
        )
        self.assertEqual(split_statements(" ;\n; "), [])

    def test_terminate_closes(self) -> None:
        self.assertEqual(self.send(f.Terminate()), ([], True))

    def test_malformed_query_is_a_protocol_violation(self) -> None:
        data, close = self.console.handle(ord("Q"), b"SHOW STATS")  # no terminating NUL
        self.assertTrue(close)
        (fatal,) = decode_all(data)
        self.assertEqual((fatal.severity, fatal.sqlstate), ("FATAL", "08P01"))


class MuteTests(ConsoleTestCase):
    def test_mute_twice_gives_a_notice(self) -> None:
        self.assertEqual(self.query("MUTE 50fde20626009aba"), [b.CommandComplete("MUTE")])
        notice, done = self.query("mute '50FDE20626009ABA';")
        self.assertIsInstance(notice, b.NoticeResponse)
        self.assertEqual(notice.severity, "NOTICE")
        self.assertEqual(notice.message, "fingerprint 50fde20626009aba is already muted")
        self.assertEqual(done, b.CommandComplete("MUTE"))
        self.assertEqual(self.status.muted, {"50fde20626009aba"})

    def test_unmute_twice_gives_a_notice(self) -> None:
        self.status.muted.add("abc")
        self.assertEqual(self.query("UNMUTE abc"), [b.CommandComplete("UNMUTE")])
        notice, done = self.query("UNMUTE 'abc'")
        self.assertIsInstance(notice, b.NoticeResponse)
        self.assertEqual(notice.message, "fingerprint abc is not muted")
        self.assertEqual(done, b.CommandComplete("UNMUTE"))
        self.assertEqual(self.status.calls, [("unmute", "abc"), ("unmute", "abc")])

    def test_bad_fingerprints_are_refused(self) -> None:
        for sql in ("MUTE", "MUTE xyz", "MUTE 'abc", "UNMUTE ab cd", "MUTE ''", "unmute 'a;b'"):
            (answer,) = self.query(sql)
            self.assertIn("needs one fingerprint", self.error(answer, "42601"), sql)
        self.assertEqual(self.status.calls, [])


class ReloadTests(ConsoleTestCase):
    def test_reload_lists_changed_keys(self) -> None:
        self.status.reload_result = ["comparison.sample-rate", "log.level"]
        notice, done = self.query("RELOAD")
        self.assertIsInstance(notice, b.NoticeResponse)
        self.assertEqual(notice.message, "changed: comparison.sample-rate, log.level")
        self.assertEqual(done, b.CommandComplete("RELOAD"))

    def test_trace_and_untrace_a_session(self) -> None:
        notice, done = self.query("TRACE 42")
        self.assertEqual((notice.message, done), ("tracing 42", b.CommandComplete("TRACE")))
        notice, done = self.query("untrace 42;")
        self.assertEqual((notice.message, done), ("untraced 42", b.CommandComplete("UNTRACE")))
        self.assertEqual(self.status.calls[-2:], [("trace", (42, True)), ("trace", (42, False))])

    def test_trace_of_an_unknown_session_is_an_error_and_the_console_goes_on(self) -> None:
        (error,) = self.query("TRACE 7")
        self.assertEqual((error.sqlstate, error.message), ("42704", "no session 7"))
        self.assertEqual(self.query("TRACE 42")[0].message, "tracing 42")

    def test_reset_timings(self) -> None:
        notice, done = self.query("reset  timings;")
        self.assertEqual(notice.message, "forgot the timings of 3 fingerprints")
        self.assertEqual(done, b.CommandComplete("RESET"))
        self.assertIn(("reset_timings", None), self.status.calls)

    def test_reload_with_nothing_changed(self) -> None:
        notice, done = self.query("reload;")
        self.assertEqual(notice.message, "nothing changed")
        self.assertEqual(done, b.CommandComplete("RELOAD"))

    def test_config_error_is_f0000_and_the_console_goes_on(self) -> None:
        self.status.reload_result = ConfigError("comparison.sample-rate: must be within [0, 1]")
        (answer,) = self.query("RELOAD")
        message = self.error(answer, "F0000")
        self.assertEqual(message, "comparison.sample-rate: must be within [0, 1]")
        self.assertEqual(self.table("SHOW CONFIG")[1][0], ("listen.port", "6432"))


class FailureTests(ConsoleTestCase):
    def test_unknown_commands(self) -> None:
        for sql in ("SELECT 1", "SET client_encoding = 'UTF8'", "BEGIN", "SHOW server_version"):
            (answer,) = self.query(sql)
            self.assertEqual(
                self.error(answer, "42601"), f'unknown admin command "{sql}"; try SHOW HELP'
            )

    def test_long_catalog_query_is_quoted_shortened(self) -> None:
        sql = (
            'SELECT n.nspname as "Schema",\n  c.relname as "Name" FROM pg_catalog.pg_class c'
            " LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind"
            " IN ('r','p','v','m','S','f','') ORDER BY 1,2;"
        )
        (answer,) = self.query(sql)
        message = self.error(answer, "42601")
        self.assertTrue(message.startswith('unknown admin command "SELECT n.nspname as "Schema"'))
        self.assertTrue(message.endswith('..."; try SHOW HELP'), message)
        self.assertLess(len(message), 120)

    def test_exception_in_status_is_xx000_and_the_console_goes_on(self) -> None:
        self.status.broken = RuntimeError("the monitor is gone")
        (answer,) = self.query("SHOW STATS")
        self.assertEqual(self.error(answer, "XX000"), "the monitor is gone")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.status.broken = None
        self.assertEqual(self.table("SHOW STATS")[1][0], ("sessions", "3"))

    def test_bad_values_from_status_are_xx000(self) -> None:
        self.status.event_list = [event(1, "tag_mismatch", time="yesterday")]
        (answer,) = self.query("SHOW MISMATCHES")
        self.error(answer, "XX000")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class ProtocolTests(ConsoleTestCase):
    def test_extended_refused_once_then_skipped_to_sync(self) -> None:
        answer, close = self.send(
            f.Parse("", "SHOW STATS"),
            f.Bind("", ""),
            f.Describe("P"),
            f.Execute(),
            f.Query("SHOW STATS"),  # PostgreSQL ignores everything until Sync, even this
            f.Sync(),
        )
        self.assertFalse(close)
        self.assertEqual(len(answer), 2, answer)
        message = self.error(answer[0], "0A000")
        self.assertEqual(message, "the admin console accepts simple queries only")
        self.assertEqual(answer[1], b.ReadyForQuery("I"))
        self.assertEqual(self.table("SHOW CONFIG")[1][1], ("truth.password", "***"))

    def test_error_is_sent_before_the_sync_arrives(self) -> None:
        answer, _ = self.send(f.Parse("s", "SHOW STATS"), f.Flush())
        self.assertEqual(len(answer), 1)
        self.error(answer[0], "0A000")
        self.assertEqual(self.send(f.Sync()), ([b.ReadyForQuery("I")], False))

    def test_terminate_while_skipping(self) -> None:
        self.assertEqual(self.send(f.Parse("", "x"), f.Terminate())[1], True)

    def test_other_messages_refused_with_ready_for_query(self) -> None:
        answer, close = self.send(f.FunctionCall(1598), f.PasswordMessage.cleartext("x"))
        self.assertFalse(close)
        self.assertEqual(len(answer), 4)
        for refusal in answer[0::2]:
            self.error(refusal, "0A000")
        self.assertEqual(answer[1::2], [b.ReadyForQuery("I")] * 2)

    def test_copy_messages_outside_copy_are_ignored(self) -> None:
        self.assertEqual(self.send(f.CopyData(b"x"), f.CopyDone(), f.CopyFail("no")), ([], False))
        self.assertEqual(self.table("SHOW CONFIG")[0], [("key", 25), ("value", 25)])

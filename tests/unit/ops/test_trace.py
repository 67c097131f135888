"""The protocol trace: real encoded messages fed at awkward boundaries, read back as lines."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from twisted.trial.unittest import SynchronousTestCase

from twinkly.ops.trace import ProtocolTrace, session_tap
from twinkly.testing import ClientHarness
from twinkly.wire import backend as b
from twinkly.wire import frontend as f
from twinkly.wire.buffers import tagged
from twinkly.wire.frontend import encode

T0 = datetime(2026, 11, 26, 22, 50, 1, 123456, tzinfo=UTC).timestamp()


def ticking(start: float = T0, step: float = 0.5) -> Callable[[], float]:
    """A fake clock advancing by ``step`` at every reading."""
    times: Iterator[float] = (start + i * step for i in range(10**6))
    return lambda: next(times)


def fed(feed: Callable[[bytes], None], data: bytes, sizes: tuple[int, ...] = (1, 3, 7)) -> None:
    """Feed ``data`` in pieces of cycling sizes, so every header and payload gets split."""
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        feed(data[pos : pos + size])
        pos, i = pos + size, i + 1


def body(line: str) -> str:
    """A line without its timestamp."""
    return line.split(" ", 1)[1]


class TraceTests(SynchronousTestCase):
    def make(self, **kwargs: object) -> ProtocolTrace:
        path = self.mktemp()
        kwargs.setdefault("max_bytes", 1 << 20)
        kwargs.setdefault("clock", ticking())
        trace = ProtocolTrace(path, **kwargs)  # type: ignore[arg-type]
        self.addCleanup(trace.close)
        return trace

    def lines(self, trace: ProtocolTrace) -> list[str]:
        trace.close()
        with open(trace.path, encoding="utf-8") as file:
            return file.read().splitlines()

    def test_startup_then_query_on_client_leg(self) -> None:
        trace = self.make()
        startup = f.StartupMessage({"user": "alice", "database": "shop"}).encode()
        query = encode(f.Query("SELECT 1")) + encode(f.Sync()) + encode(f.Terminate())
        fed(trace.leg(7, "client", ">", startup=True), startup + query)
        self.assertEqual(
            [body(line) for line in self.lines(trace)],
            [
                "s=7 client> StartupMessage protocol=3.0 user='alice' database='shop'",
                "s=7 client> Query sql='SELECT 1'",
                "s=7 client> Sync",
                "s=7 client> Terminate",
            ],
        )

    def test_timestamps_come_from_the_clock(self) -> None:
        trace = self.make(clock=ticking(T0, 1.5))
        feed = trace.leg(7, "truth", ">")
        feed(encode(f.Query("SELECT 1")))
        feed(encode(f.Sync()))
        lines = self.lines(trace)
        self.assertEqual(lines[0], "2026-11-26T22:50:01.123456Z s=7 truth> Query sql='SELECT 1'")
        self.assertEqual(lines[1], "2026-11-26T22:50:02.623456Z s=7 truth> Sync")

    def test_backend_answer(self) -> None:
        trace = self.make()
        answer = b"".join(
            encode(m)
            for m in (
                b.RowDescription((b.Column("id", type_oid=23), b.Column("name"))),
                b.DataRow((b"1", None)),
                b.DataRow((b"2", b"x" * 100)),
                b.CommandComplete("SELECT 2"),
                b.ReadyForQuery("I"),
            )
        )
        fed(trace.leg(3, "target", "<"), answer, (2, 5, 11))
        self.assertEqual(
            [body(line) for line in self.lines(trace)],
            [
                "s=3 target< RowDescription cols=2 names=['id', 'name']",
                "s=3 target< DataRow cols=2 values=['1', NULL]",
                f"s=3 target< DataRow cols=2 values=['2', '{'x' * 64}...(+36)']",
                "s=3 target< CommandComplete tag='SELECT 2'",
                "s=3 target< ReadyForQuery status=I",
            ],
        )

    def test_data_row_shows_eight_columns_and_binary_as_hex(self) -> None:
        trace = self.make()
        feed = trace.leg(1, "client", "<")
        columns = tuple(b.Column(f"c{i}", format=1 if i == 0 else 0) for i in range(10))
        feed(encode(b.RowDescription(columns)))
        feed(encode(b.DataRow((b"\x00\x01", *(str(i).encode() for i in range(1, 10))))))
        row = self.lines(trace)[1]
        self.assertTrue(
            row.endswith(
                "DataRow cols=10 values=[\\x0001, '1', '2', '3', '4', '5', '6', '7', ...]"
            ),
            row,
        )

    def test_formats_of_a_different_row_shape_are_ignored(self) -> None:
        trace = self.make()
        feed = trace.leg(1, "client", "<")
        feed(encode(b.RowDescription((b.Column("n", format=1),))))
        feed(encode(b.DataRow((b"a", b"b"))))  # not the described shape: read as text
        self.assertTrue(self.lines(trace)[1].endswith("DataRow cols=2 values=['a', 'b']"))

    def test_error_response(self) -> None:
        trace = self.make()
        error = b.ErrorResponse.make("ERROR", "42P01", 'relation "nope" does not exist')
        fed(trace.leg(2, "truth", "<"), encode(error) + encode(b.ReadyForQuery("E")), (4,))
        self.assertEqual(
            [body(line) for line in self.lines(trace)],
            [
                "s=2 truth< ErrorResponse severity=ERROR code=42P01"
                " message='relation \"nope\" does not exist'",
                "s=2 truth< ReadyForQuery status=E",
            ],
        )

    def test_extended_protocol(self) -> None:
        trace = self.make()
        messages = (
            f.Parse("s1", "select $1::int, $2, $3, $4", (23, 25)),
            f.Bind("p1", "s1", (0, 1, 0, 0), (b"42", b"\xde\xad", None, b"y" * 70)),
            f.Describe("P", "p1"),
            f.Execute("p1", 10),
        )
        fed(trace.leg(5, "client", ">"), b"".join(encode(m) for m in messages), (6,))
        self.assertEqual(
            [body(line) for line in self.lines(trace)],
            [
                "s=5 client> Parse name='s1' sql='select $1::int, $2, $3, $4' types=2",
                "s=5 client> Bind portal='p1' statement='s1' params=4"
                f" values=['42', \\xdead, NULL, '{'y' * 64}...(+6)']",
                "s=5 client> Describe kind=P name='p1'",
                "s=5 client> Execute portal='p1' max_rows=10",
            ],
        )

    def test_passwords_never_appear(self) -> None:
        trace = self.make()
        server, client = trace.leg(4, "client", "<"), trace.leg(4, "client", ">")
        server(encode(b.Authentication(b.AUTH_CLEARTEXT)))
        client(encode(f.PasswordMessage.cleartext("hunter2-secret")))
        server(encode(b.Authentication.sasl(["SCRAM-SHA-256"])))
        client(encode(f.PasswordMessage.sasl_initial("SCRAM-SHA-256", b"n,,n=,r=nonce-secret")))
        server(encode(b.Authentication(b.AUTH_SASL_CONTINUE, b"r=nonce-secret,s=salt")))
        client(encode(f.PasswordMessage(b"c=biws,r=nonce-secret,p=proof-secret")))
        server(encode(b.Authentication(b.AUTH_OK)))
        server(encode(b.BackendKeyData(1234, b"key-secret")))
        lines = self.lines(trace)
        self.assertNotIn("secret", "\n".join(lines))
        self.assertEqual(
            [body(line) for line in lines],
            [
                "s=4 client< Authentication kind=CleartextPassword",
                "s=4 client> PasswordMessage len=15",
                "s=4 client< Authentication kind=SASL mechanisms=['SCRAM-SHA-256']",
                "s=4 client> PasswordMessage len=38",
                "s=4 client< Authentication kind=SASLContinue len=21",
                "s=4 client> PasswordMessage len=36",
                "s=4 client< Authentication kind=Ok",
                "s=4 client< BackendKeyData pid=1234",
            ],
        )

    def test_redaction_hides_values(self) -> None:
        trace = self.make(redact=True)
        client, server = trace.leg(1, "client", ">"), trace.leg(1, "client", "<")
        client(encode(f.Query("SELECT * FROM t WHERE name = 'bob' AND card = 4111")))
        client(encode(f.Parse("", "UPDATE t SET name = 'eve' WHERE id = $1")))
        client(encode(f.Bind("", "", (), (b"carol",))))
        client(encode(f.Query("this is not sql 'dave'")))
        server(encode(b.DataRow((b"frank", b"4222"))))
        lines = self.lines(trace)
        text = "\n".join(lines)
        for secret in ("bob", "4111", "eve", "carol", "dave", "frank", "4222"):
            self.assertNotIn(secret, text)
        self.assertEqual(
            [body(line) for line in lines],
            [
                "s=1 client> Query sql='SELECT * FROM t WHERE name = $1 AND card = $2'",
                "s=1 client> Parse name='' sql='UPDATE t SET name = $2 WHERE id = $1' types=0",
                "s=1 client> Bind portal='' statement='' params=1",
                "s=1 client> Query sql='<unparsed>'",
                "s=1 client< DataRow cols=2",
            ],
        )

    def test_without_redaction_values_show(self) -> None:
        trace = self.make()
        feed = trace.leg(1, "client", ">")
        feed(encode(f.Query("SELECT 'bob'")))
        feed(encode(f.Bind("", "", (), (b"carol",))))
        text = "\n".join(self.lines(trace))
        self.assertIn("sql=\"SELECT 'bob'\"", text)
        self.assertIn("values=['carol']", text)

    def test_size_bound(self) -> None:
        trace = self.make(max_bytes=400)
        feed = trace.leg(1, "client", ">")
        for i in range(50):
            feed(encode(f.Query(f"SELECT {i}")))
        trace.close()
        self.assertLessEqual(os.path.getsize(trace.path), 400)
        lines = self.lines(trace)
        self.assertEqual(lines[-1], "... trace truncated at 400 bytes")
        self.assertEqual(body(lines[0]), "s=1 client> Query sql='SELECT 0'")
        self.assertEqual(trace.dropped, 50 - (len(lines) - 1))
        self.assertGreater(trace.dropped, 0)

    def test_file_never_exceeds_the_bound(self) -> None:
        for limit in range(300, 420, 7):  # the marker must fit whatever the last line's size
            trace = self.make(max_bytes=limit)
            feed = trace.leg(1, "client", ">")
            for i in range(30):
                feed(encode(f.Query(f"SELECT {i}")))
            trace.close()
            self.assertLessEqual(os.path.getsize(trace.path), limit, limit)
            self.assertEqual(self.lines(trace)[-1], f"... trace truncated at {limit} bytes")

    def test_nothing_written_after_truncation(self) -> None:
        trace = self.make(max_bytes=200)
        feed = trace.leg(1, "client", ">")
        for _ in range(10):
            feed(encode(f.Query("SELECT 1")))
        size, dropped = trace._size, trace.dropped
        feed(encode(f.Query("SELECT 2")) + encode(f.Sync()))
        self.assertEqual(trace._size, size)
        self.assertEqual(trace.dropped, dropped + 2)
        self.assertEqual(sum("truncated" in line for line in self.lines(trace)), 1)

    def test_appends_and_counts_what_the_file_held(self) -> None:
        path = self.mktemp()
        with open(path, "w") as file:
            file.write("x" * 150 + "\n")
        trace = ProtocolTrace(path, 250, ticking())
        feed = trace.leg(1, "client", ">")
        for _ in range(5):
            feed(encode(f.Query("SELECT 1")))
        trace.close()
        with open(path) as file:
            lines = file.read().splitlines()
        self.assertEqual(lines[0], "x" * 150)
        self.assertEqual(lines[-1], "... trace truncated at 250 bytes")
        self.assertLessEqual(os.path.getsize(path), 250)

    def test_session_filter(self) -> None:
        trace = self.make(sessions=frozenset({1}))
        self.assertTrue(trace.wants(1))
        self.assertFalse(trace.wants(2))
        trace.trace_session(2)
        self.assertTrue(trace.wants(2))
        trace.untrace_session(1)
        self.assertFalse(trace.wants(1))

    def test_all_sessions_by_default_and_untrace(self) -> None:
        trace = self.make()
        self.assertTrue(trace.wants(1) and trace.wants(99))
        one, two = trace.leg(1, "client", ">"), trace.leg(2, "client", ">")
        one(encode(f.Query("SELECT 'one before'")))
        trace.untrace_session(1)
        self.assertFalse(trace.wants(1))
        one(encode(f.Query("SELECT 'one while untraced'")))
        two(encode(f.Query("SELECT 'two'")))
        trace.trace_session(1)
        one(encode(f.Query("SELECT 'one after'")))
        self.assertEqual(
            [body(line) for line in self.lines(trace)],
            [
                "s=1 client> Query sql=\"SELECT 'one before'\"",
                "s=2 client> Query sql=\"SELECT 'two'\"",
                "s=1 client> Query sql=\"SELECT 'one after'\"",
            ],
        )

    def test_garbage_stops_only_that_leg(self) -> None:
        trace = self.make()
        bad, good = trace.leg(1, "truth", "<"), trace.leg(1, "target", "<")
        bad(b"Z\xff\xff\xff\xffgarbage")  # must not raise
        bad(encode(b.ReadyForQuery("I")))
        good(encode(b.ReadyForQuery("I")))
        lines = [body(line) for line in self.lines(trace)]
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith("s=1 truth< framing failed ("), lines[0])
        self.assertIn("no longer tracing this leg", lines[0])
        self.assertEqual(lines[1], "s=1 target< ReadyForQuery status=I")

    def test_garbage_startup_packet(self) -> None:
        trace = self.make()
        trace.leg(1, "client", ">", startup=True)(b"\x00\x00\x00\x02xx")
        (line,) = self.lines(trace)
        self.assertIn("s=1 client> framing failed (invalid length of startup packet: 2)", line)

    def test_undecodable_and_unknown_messages(self) -> None:
        trace = self.make()
        client, server = trace.leg(1, "client", ">"), trace.leg(1, "client", "<")
        client(tagged(b"Q", b"no terminator"))
        client(tagged(b"@", b"abc"))
        server(tagged(b"D", b"\x00\x05"))
        client(encode(f.Sync()))  # and the leg goes on
        lines = [body(line) for line in self.lines(trace)]
        self.assertEqual(
            lines,
            [
                "s=1 client> Query undecodable (unterminated string in message) len=13",
                "s=1 client> Unknown type='@' len=3",
                "s=1 client< DataRow undecodable (message is shorter than its contents) len=2",
                "s=1 client> Sync",
            ],
        )

    def test_copy_data_shows_only_its_length(self) -> None:
        trace = self.make()
        trace.leg(1, "target", ">")(encode(f.CopyData(b"1\tsecret row\n")))
        trace.leg(1, "target", "<")(encode(f.CopyData(b"2\tsecret\n")) + encode(f.CopyDone()))
        lines = self.lines(trace)
        self.assertNotIn("secret", "\n".join(lines))
        self.assertEqual(
            [body(line) for line in lines],
            ["s=1 target> CopyData len=13", "s=1 target< CopyData len=9", "s=1 target< CopyDone"],
        )

    def test_ssl_refusal_then_startup(self) -> None:
        trace = self.make()
        client, proxy = trace.leg(9, "client", ">", startup=True), trace.leg(9, "client", "<")
        client(f.SSLRequest().encode())
        proxy(b"N")
        client(f.StartupMessage({"user": "u"}).encode() + encode(f.Query("SELECT 1")))
        proxy(encode(b.Authentication(b.AUTH_OK)) + encode(b.ParameterStatus("TimeZone", "UTC")))
        self.assertEqual(
            [body(line) for line in self.lines(trace)],
            [
                "s=9 client> SSLRequest",
                "s=9 client< SSLResponse answer='N' (refused)",
                "s=9 client> StartupMessage protocol=3.0 user='u'",
                "s=9 client> Query sql='SELECT 1'",
                "s=9 client< Authentication kind=Ok",
                "s=9 client< ParameterStatus TimeZone='UTC'",
            ],
        )

    def test_cancel_request_hides_the_key(self) -> None:
        trace = self.make()
        trace.leg(1, "client", ">", startup=True)(f.CancelRequest(42, b"\xca\xfe\xba\xbe").encode())
        (line,) = self.lines(trace)
        self.assertEqual(body(line), "s=1 client> CancelRequest pid=42")

    def test_newlines_stay_on_one_line(self) -> None:
        trace = self.make()
        trace.leg(1, "client", ">")(encode(f.Query("SELECT 1\nFROM t")))
        (line,) = self.lines(trace)
        self.assertEqual(body(line), "s=1 client> Query sql='SELECT 1\\nFROM t'")

    def test_each_chunk_is_on_disk_once_fed(self) -> None:
        """Someone debugging reads the trace while the session runs."""
        trace = self.make()
        trace.leg(1, "client", ">")(encode(f.Sync()) + encode(f.Query("SELECT 1")))
        with open(trace.path, "rb") as written:
            self.assertEqual(len(written.read().splitlines()), 2)

    def test_feeding_after_close_does_not_raise(self) -> None:
        trace = self.make()
        feed = trace.leg(1, "client", ">")
        trace.close()
        trace.close()
        feed(encode(f.Sync()))
        self.assertEqual(trace.dropped, 1)
        self.assertEqual(os.path.getsize(trace.path), 0)

    def test_a_failing_clock_does_not_raise(self) -> None:
        def broken() -> float:
            raise RuntimeError("clock gone")

        trace = self.make(clock=broken)
        feed = trace.leg(1, "client", ">")
        feed(encode(f.Sync()))  # must not raise
        feed(encode(f.Sync()))
        self.assertEqual(self.lines(trace), [])


class StartupRecordingTests(SynchronousTestCase):
    def test_kept_in_order_until_taken(self) -> None:
        from twinkly.proxy.recording import StartupRecording

        recording = StartupRecording()
        recording.add(">", b"a")
        recording.add("<", b"b")
        self.assertEqual(recording.take(), [(">", b"a"), ("<", b"b")])
        recording.add(">", b"c")  # the session's own traffic is not kept
        self.assertEqual(recording.take(), [])

    def test_bounded(self) -> None:
        from twinkly.proxy import recording as r

        recording = r.StartupRecording()
        recording.add(">", b"x" * (r.LIMIT - 1))
        recording.add(">", b"yy")
        recording.add(">", b"z")
        self.assertTrue(recording.truncated)
        self.assertEqual([len(d) for _, d in recording.take()], [r.LIMIT - 1])


class TraceWhenIdleTests(SynchronousTestCase):
    """A running session traced through its one public hook, ``attach_tap``."""

    def setUp(self) -> None:
        self.trace = ProtocolTrace(self.mktemp(), 1 << 20, lambda: 0.0)
        self.h = ClientHarness()
        self.h.startup()
        self.truth, self.target = self.h.connect_backends()
        self.session = self.h.client.session
        self.id = self.session.session_id
        for backend in (self.truth, self.target):
            backend.transport.clear()

    def lines(self) -> list[str]:
        self.trace.flush()
        with open(self.trace.path) as f:
            return f.read().splitlines()

    def test_attaches_at_once_at_a_boundary(self) -> None:
        self.session.attach_tap(session_tap(self.trace, self.id))
        self.assertTrue(self.session.traced)
        self.h.client.dataReceived(encode(f.Query("select 1")))
        self.assertEqual(self.truth.transport.value(), encode(f.Query("select 1")))
        self.assertIn(f"s={self.id} client> Query sql='select 1'", self.lines()[0])

    def test_waits_for_a_boundary_and_misses_nothing_after_it(self) -> None:
        query = encode(f.Query("select 2"))
        self.h.client.dataReceived(query[:3])  # in the middle of a message
        self.session.attach_tap(session_tap(self.trace, self.id))
        self.assertFalse(self.session.traced)
        self.h.client.dataReceived(query[3:])  # this chunk ends the message
        self.assertTrue(self.session.traced)
        self.assertEqual(self.lines(), [])  # the partial message is not decoded half-way
        self.truth.dataReceived(encode(b.ReadyForQuery("I")))
        self.h.client.dataReceived(encode(f.Sync()))
        shown = [line.split(" ", 1)[1] for line in self.lines()]
        self.assertEqual(
            shown,
            [
                f"s={self.id} truth< ReadyForQuery status=I",
                f"s={self.id} client< ReadyForQuery status=I",
                f"s={self.id} client> Sync",
                f"s={self.id} truth> Sync",
                f"s={self.id} target> Sync",
            ],
        )
        # The session's own handlers still get every byte, traced or not.
        self.assertEqual(self.truth.transport.value(), query + encode(f.Sync()))

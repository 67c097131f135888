"""The sans-IO wire codec, tested with tables of bytes: framing, start-up, every message."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twinkly.wire import backend as b
from twinkly.wire import frontend as f
from twinkly.wire.buffers import Reader
from twinkly.wire.framing import MessageFramer, ProtocolViolation, StartupFramer

# One instance of every frontend message type, with non-default fields where there are any.
FRONTEND_SAMPLES = [
    f.Query("select 1"),
    f.Parse("s1", "select $1::int, $2", (23, 25)),
    f.Parse("", "select 1"),
    f.Bind("p1", "s1", (0, 1), (b"42", None, b""), (1, 0)),
    f.Bind("", ""),
    f.Describe("S", "s1"),
    f.Describe("P", ""),
    f.Execute("p1", 10),
    f.Execute(),
    f.Close("S", "s1"),
    f.Close("P", "p1"),
    f.Sync(),
    f.Flush(),
    f.FunctionCall(1598, (0, 1), (b"abc", None), 1),
    f.CopyData(b"1\tone\n"),
    f.CopyDone(),
    f.CopyFail("client gave up"),
    f.PasswordMessage.cleartext("secret"),
    f.PasswordMessage.sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abc"),
    f.Terminate(),
]

# One instance of every backend message type.
BACKEND_SAMPLES = [
    b.Authentication(b.AUTH_OK),
    b.Authentication(b.AUTH_MD5, b"\x01\x02\x03\x04"),
    b.Authentication.sasl(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]),
    b.ParameterStatus("server_version", "15.4"),
    b.BackendKeyData(1234, b"\xde\xad\xbe\xef"),
    b.ReadyForQuery("I"),
    b.ReadyForQuery("E"),
    b.RowDescription((b.Column("a"), b.Column("n", 16384, 2, 23, 4, -1, 1))),
    b.DataRow((b"1", None, b"")),
    b.CommandComplete("SELECT 2"),
    b.ErrorResponse.make("ERROR", "42P01", 'relation "t" does not exist', "some detail"),
    b.NoticeResponse.make("NOTICE", "00000", "hello"),
    b.NotificationResponse(99, "channel", "payload"),
    b.ParameterDescription((23, 25)),
    b.CopyInResponse(0, (0, 0)),
    b.CopyOutResponse(1, (1,)),
    b.CopyBothResponse(0, ()),
    b.FunctionCallResponse(b"\x00\x01"),
    b.FunctionCallResponse(None),
    b.NegotiateProtocolVersion(0, ("_pq_.option",)),
    b.CopyData(b"row\n"),
    b.ParseComplete(),
    b.BindComplete(),
    b.CloseComplete(),
    b.NoData(),
    b.PortalSuspended(),
    b.EmptyQueryResponse(),
    b.CopyDone(),
]

# Hand-written bytes for a representative subset.
FRONTEND_BYTES = [
    (f.Query("select 1"), b"Q\x00\x00\x00\x0dselect 1\x00"),
    (f.Sync(), b"S\x00\x00\x00\x04"),
    (f.Terminate(), b"X\x00\x00\x00\x04"),
    (f.Parse("", "select 1"), b"P\x00\x00\x00\x10\x00select 1\x00\x00\x00"),
    (f.Parse("s", "x", (23,)), b"P\x00\x00\x00\x0es\x00x\x00\x00\x01\x00\x00\x00\x17"),
    (
        f.Bind("", "s", (), (b"7", None), ()),
        b"B\x00\x00\x00\x16\x00s\x00\x00\x00\x00\x02\x00\x00\x00\x017\xff\xff\xff\xff\x00\x00",
    ),
    (f.Describe("P", ""), b"D\x00\x00\x00\x06P\x00"),
    (f.Execute("", 0), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
    (f.Close("S", "ab"), b"C\x00\x00\x00\x08Sab\x00"),
    (f.PasswordMessage.cleartext("pw"), b"p\x00\x00\x00\x07pw\x00"),
]
BACKEND_BYTES = [
    (b.ReadyForQuery("I"), b"Z\x00\x00\x00\x05I"),
    (b.ReadyForQuery("T"), b"Z\x00\x00\x00\x05T"),
    (b.CommandComplete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
    (b.DataRow((b"1", None)), b"D\x00\x00\x00\x0f\x00\x02\x00\x00\x00\x011\xff\xff\xff\xff"),
    (
        b.ErrorResponse.make("ERROR", "42P01", "nope"),
        b"E\x00\x00\x00\x20SERROR\x00VERROR\x00C42P01\x00Mnope\x00\x00",
    ),
    (b.Authentication(b.AUTH_OK), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    (b.Authentication(b.AUTH_MD5, b"salt"), b"R\x00\x00\x00\x0c\x00\x00\x00\x05salt"),
    (b.ParseComplete(), b"1\x00\x00\x00\x04"),
    (b.NoData(), b"n\x00\x00\x00\x04"),
    (
        b.BackendKeyData(7, b"\x00\x00\x00\x09"),
        b"K\x00\x00\x00\x0c\x00\x00\x00\x07\x00\x00\x00\x09",
    ),
    (b.ParameterStatus("a", "b"), b"S\x00\x00\x00\x08a\x00b\x00"),
    (b.CopyOutResponse(0, (0,)), b"H\x00\x00\x00\x09\x00\x00\x01\x00\x00"),
    (
        b.RowDescription((b.Column("x"),)),
        b"T\x00\x00\x00\x1a\x00\x01x\x00\x00\x00\x00\x00\x00\x00"
        b"\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00",
    ),
]


def frame_one(data: bytes) -> tuple[int, bytes]:
    messages = MessageFramer().feed(data)
    if len(messages) != 1:
        raise AssertionError(f"expected one message, got {messages!r}")
    return messages[0]


class RoundTripTests(SynchronousTestCase):
    def test_every_frontend_type_is_sampled(self) -> None:
        sampled = {type(m) for m in FRONTEND_SAMPLES}
        self.assertEqual(sampled, set(f.FRONTEND_MESSAGES.values()))

    def test_every_backend_type_is_sampled(self) -> None:
        sampled = {type(m) for m in BACKEND_SAMPLES}
        self.assertEqual(sampled, set(b.BACKEND_MESSAGES.values()))

    def test_frontend_round_trip(self) -> None:
        for message in FRONTEND_SAMPLES:
            type_byte, payload = frame_one(f.encode(message))
            self.assertEqual(type_byte, message.TYPE[0])
            decoded = f.decode_frontend(type_byte, payload)
            self.assertIs(type(decoded), type(message))
            self.assertEqual(decoded, message)

    def test_backend_round_trip(self) -> None:
        for message in BACKEND_SAMPLES:
            type_byte, payload = frame_one(f.encode(message))
            self.assertEqual(type_byte, message.TYPE[0])
            decoded = b.decode_backend(type_byte, payload)
            self.assertIs(type(decoded), type(message))
            self.assertEqual(decoded, message)

    def test_frontend_bytes(self) -> None:
        for message, wire in FRONTEND_BYTES:
            self.assertEqual(f.encode(message), wire, message)
            self.assertEqual(f.decode_frontend(*frame_one(wire)), message)

    def test_backend_bytes(self) -> None:
        for message, wire in BACKEND_BYTES:
            self.assertEqual(f.encode(message), wire, message)
            self.assertEqual(b.decode_backend(*frame_one(wire)), message)

    def test_error_fields_and_properties(self) -> None:
        error = b.ErrorResponse.make("FATAL", "28P01", "bad password", "detail")
        payload = frame_one(f.encode(error))[1]
        self.assertEqual(
            b.error_fields(payload),
            {"S": "FATAL", "V": "FATAL", "C": "28P01", "M": "bad password", "D": "detail"},
        )
        decoded = b.decode_backend(ord("E"), payload)
        self.assertEqual(
            (decoded.sqlstate, decoded.message, decoded.severity),
            ("28P01", "bad password", "FATAL"),
        )

    def test_notice_is_not_an_error(self) -> None:
        fields = {"S": "NOTICE", "C": "00000", "M": "m"}
        self.assertNotEqual(b.NoticeResponse(fields), b.ErrorResponse(fields))
        wire = f.encode(b.NoticeResponse(fields))
        self.assertEqual(wire[:1], b"N")
        self.assertIs(type(b.decode_backend(*frame_one(wire))), b.NoticeResponse)

    def test_sasl_helpers(self) -> None:
        auth = b.decode_backend(*frame_one(f.encode(b.Authentication.sasl(["A", "B"]))))
        self.assertEqual(auth.sasl_mechanisms(), ["A", "B"])
        message = f.PasswordMessage.sasl_initial("SCRAM-SHA-256", b"first")
        self.assertEqual(message.parse_sasl_initial(), ("SCRAM-SHA-256", b"first"))
        self.assertEqual(f.PasswordMessage.cleartext("pw").parse_cleartext(), "pw")

    def test_unknown_types_and_trailing_bytes(self) -> None:
        cases = [
            (f.decode_frontend, ord("z"), b""),
            (b.decode_backend, ord("z"), b""),
            (f.decode_frontend, ord("S"), b"x"),  # Sync with a payload
            (b.decode_backend, ord("1"), b"x"),  # ParseComplete with a payload
            (f.decode_frontend, ord("Q"), b"select 1\x00junk"),
            (b.decode_backend, ord("Z"), b""),  # ReadyForQuery without its status
            (b.decode_backend, ord("D"), b"\x00\x01\x00\x00\x00\x05ab"),  # short value
        ]
        for decode, type_byte, payload in cases:
            with self.assertRaises(ProtocolViolation, msg=(type_byte, payload)):
                decode(type_byte, payload)


class StartupTests(SynchronousTestCase):
    def frame(self, data: bytes) -> bytes:
        body, rest = StartupFramer().feed(data)
        self.assertEqual(rest, b"")
        assert body is not None
        return body

    def test_startup_message_bytes(self) -> None:
        message = f.StartupMessage({"user": "bob", "database": "db"})
        wire = b"\x00\x00\x00\x1e\x00\x03\x00\x00user\x00bob\x00database\x00db\x00\x00"
        self.assertEqual(message.encode(), wire)
        decoded = f.decode_startup(self.frame(wire))
        self.assertEqual(decoded, message)
        self.assertEqual((decoded.major, decoded.minor), (3, 0))

    def test_ssl_and_gssenc_requests(self) -> None:
        self.assertEqual(f.SSLRequest().encode(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
        self.assertEqual(f.GSSENCRequest().encode(), b"\x00\x00\x00\x08\x04\xd2\x16\x30")
        self.assertEqual(f.decode_startup(self.frame(f.SSLRequest().encode())), f.SSLRequest())
        self.assertEqual(
            f.decode_startup(self.frame(f.GSSENCRequest().encode())), f.GSSENCRequest()
        )

    def test_cancel_request(self) -> None:
        cancel = f.CancelRequest(4242, b"\x01\x02\x03\x04")
        wire = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x10\x92\x01\x02\x03\x04"
        self.assertEqual(cancel.encode(), wire)
        self.assertEqual(f.decode_startup(self.frame(wire)), cancel)
        long_key = f.CancelRequest(1, bytes(range(32)))  # protocol 3.2 allows longer keys
        self.assertEqual(f.decode_startup(self.frame(long_key.encode())), long_key)

    def test_bad_startup_packets(self) -> None:
        cases = [
            f.StartupMessage({"user": "bob"}, protocol=2 << 16).encode(),
            f.StartupMessage({"user": "bob"}, protocol=4 << 16).encode(),
            f.StartupMessage({"database": "db"}).encode(),  # no user
            f.CancelRequest(1, b"\x01\x02\x03").encode(),  # key too short
            f.CancelRequest(1, bytes(257)).encode(),  # key too long
            b"\x00\x00\x00\x09\x04\xd2\x16\x2fx",  # SSLRequest with a trailing byte
            b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00bob",  # unterminated
        ]
        for wire in cases:
            with self.assertRaises(ProtocolViolation, msg=wire):
                f.decode_startup(self.frame(wire))

    def test_messages_name_the_problem(self) -> None:
        e = self.assertRaises(
            ProtocolViolation,
            f.decode_startup,
            self.frame(f.StartupMessage({"user": "u"}, protocol=2 << 16).encode()),
        )
        self.assertIn("unsupported frontend protocol 2.0", str(e))
        e = self.assertRaises(
            ProtocolViolation,
            f.decode_startup,
            self.frame(f.StartupMessage({"database": "d"}).encode()),
        )
        self.assertIn("no PostgreSQL user name", str(e))

    def test_split_and_followed_by_the_next_phase(self) -> None:
        framer = StartupFramer()
        wire = f.SSLRequest().encode() + f.StartupMessage({"user": "u"}).encode() + b"Q"
        for byte in wire[:7]:
            self.assertEqual(framer.feed(bytes([byte])), (None, b""))
        body, rest = framer.feed(wire[7:])
        self.assertEqual(f.decode_startup(body), f.SSLRequest())
        body, rest = framer.feed(rest)
        self.assertEqual(f.decode_startup(body), f.StartupMessage({"user": "u"}))
        self.assertEqual(rest, b"Q")

    def test_length_limits(self) -> None:
        # As PostgreSQL: at most 10,000 bytes after the length word.
        body = b"\x00\x03\x00\x00user\x00u\x00" + b"a\x00" * 4994 + b"\x00"
        wire = (len(body) + 4).to_bytes(4, "big") + body
        self.assertEqual(len(wire), 10004)
        self.assertEqual(StartupFramer().feed(wire), (body, b""))
        for length in (0, 7, 10005, 0xFFFFFFFF):
            with self.assertRaises(ProtocolViolation) as caught:
                StartupFramer().feed(length.to_bytes(4, "big"))
            self.assertEqual(caught.exception.sqlstate, "08P01")
        with self.assertRaises(ProtocolViolation):
            StartupFramer(max_message_bytes=100).feed((101).to_bytes(4, "big"))


class MessageFramerTests(SynchronousTestCase):
    stream = (
        f.encode(b.RowDescription((b.Column("a"),)))
        + f.encode(b.DataRow((b"1",)))
        + f.encode(b.DataRow((None,)))
        + f.encode(b.CommandComplete("SELECT 2"))
        + f.encode(b.ReadyForQuery("I"))
    )
    expected = [
        (ord("T"), b.RowDescription((b.Column("a"),)).payload()),
        (ord("D"), b.DataRow((b"1",)).payload()),
        (ord("D"), b.DataRow((None,)).payload()),
        (ord("C"), b"SELECT 2\x00"),
        (ord("Z"), b"I"),
    ]

    def test_coalesced(self) -> None:
        framer = MessageFramer()
        self.assertEqual(framer.feed(self.stream), self.expected)
        self.assertEqual(framer.buffered, 0)

    def test_one_byte_at_a_time(self) -> None:
        framer = MessageFramer()
        out = []
        for i in range(len(self.stream)):
            out.extend(framer.feed(self.stream[i : i + 1]))
        self.assertEqual(out, self.expected)
        self.assertEqual(framer.buffered, 0)

    def test_every_split_point(self) -> None:
        for cut in range(len(self.stream) + 1):
            framer = MessageFramer()
            out = framer.feed(self.stream[:cut]) + framer.feed(self.stream[cut:])
            self.assertEqual(out, self.expected, cut)

    def test_split_in_header_then_in_payload(self) -> None:
        wire = f.encode(f.Query("select 1"))
        framer = MessageFramer()
        self.assertEqual(framer.feed(wire[:3]), [])  # inside the length word
        self.assertEqual(framer.buffered, 3)
        self.assertEqual(framer.feed(wire[3:8]), [])  # inside the payload
        self.assertEqual(framer.feed(b""), [])
        self.assertEqual(framer.feed(wire[8:] + wire[:2]), [(ord("Q"), b"select 1\x00")])
        self.assertEqual(framer.buffered, 2)
        self.assertEqual(framer.feed(wire[2:]), [(ord("Q"), b"select 1\x00")])

    def test_large_message_over_many_chunks(self) -> None:
        value = bytes(range(256)) * 4096  # 1 MiB
        wire = f.encode(f.CopyData(value)) + f.encode(f.CopyDone())
        framer = MessageFramer()
        out = []
        for start in range(0, len(wire), 1000):
            out.extend(framer.feed(wire[start : start + 1000]))
        self.assertEqual(out, [(ord("d"), value), (ord("c"), b"")])

    def test_length_limit(self) -> None:
        framer = MessageFramer(max_message_bytes=100)
        payload = b"x" * 96
        self.assertEqual(framer.feed(b"d" + (100).to_bytes(4, "big") + payload), [(100, payload)])
        for length in (0, 3, 101, 0xFFFFFFFF):
            with self.assertRaises(ProtocolViolation) as caught:
                MessageFramer(max_message_bytes=100).feed(b"d" + length.to_bytes(4, "big"))
            self.assertEqual(caught.exception.sqlstate, "08P01")

    def test_length_limit_checked_on_split_header(self) -> None:
        framer = MessageFramer(max_message_bytes=100)
        self.assertEqual(framer.feed(b"d\x00\x00"), [])
        self.assertRaises(ProtocolViolation, framer.feed, b"\x01\x00")

    def test_length_limit_after_good_messages(self) -> None:
        framer = MessageFramer(max_message_bytes=100)
        wire = f.encode(f.Sync()) + b"Q" + (1000).to_bytes(4, "big")
        e = self.assertRaises(ProtocolViolation, framer.feed, wire)
        self.assertIn("1000", str(e))


class ReaderTests(SynchronousTestCase):
    def test_overruns(self) -> None:
        cases = [
            lambda: Reader(b"").byte(),
            lambda: Reader(b"\x00").int16(),
            lambda: Reader(b"\x00\x00\x00").int32(),
            lambda: Reader(b"\x00\x00\x00").uint32(),
            lambda: Reader(b"abc").cstring(),
            lambda: Reader(b"ab").bytes_(3),
            lambda: Reader(b"\x00\x00\x00\x05abcd").sized(),
            lambda: Reader(b"\xff\xff\xff\xfeab").sized(),  # negative length other than -1
            lambda: Reader(b"x").done(),
        ]
        for i, case in enumerate(cases):
            with self.assertRaises(ProtocolViolation, msg=i):
                case()

    def test_reads(self) -> None:
        r = Reader(b"\x07\xff\xfe\xff\xff\xff\xffab\x00\xff\xff\xff\xff\x00\x00\x00\x01zrest")
        self.assertEqual(r.byte(), 7)
        self.assertEqual(r.int16(), -2)
        self.assertEqual(r.int32(), -1)
        self.assertEqual(r.cstring(), "ab")
        self.assertIsNone(r.sized())
        self.assertEqual(r.sized(), b"z")
        self.assertEqual(r.rest(), b"rest")
        r.done()

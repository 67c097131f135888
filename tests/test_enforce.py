"""comparison.fail-on-differences without sockets: what the client receives, and what
Twinkly's own statements do, fed byte by byte through StringTransports."""

from __future__ import annotations

from test_protocols import CONFIG, TCPStringTransport, client_frames, frames, ready_backend
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twinkly.compare.monitor import ComparisonSettings, Monitor
from twinkly.config import loads
from twinkly.proxy import ProxyFactory
from twinkly.report.sink import MemorySink
from twinkly.wire import backend as b
from twinkly.wire import frontend as f


def answer(*values: bytes, tag: str = "SELECT 1", status: str = "I") -> bytes:
    return (
        f.encode(b.RowDescription((b.Column("v"),)))
        + b"".join(f.encode(b.DataRow((v,))) for v in values)
        + f.encode(b.CommandComplete(tag))
        + f.encode(b.ReadyForQuery(status))
    )


def done(tag: str, status: str) -> bytes:
    return f.encode(b.CommandComplete(tag)) + f.encode(b.ReadyForQuery(status))


class EnforcerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = loads(CONFIG)
        self.sink = MemorySink()
        settings = ComparisonSettings(fail_on_differences=True)
        monitor = Monitor(settings, self.sink, ("truthdb", "targetdb"))
        self.factory = ProxyFactory(self.config, MemoryReactorClock(), monitor=monitor)
        self.client = self.factory.buildProtocol(None)
        self.transport = TCPStringTransport()
        self.client.makeConnection(self.transport)
        self.client.dataReceived(f.StartupMessage({"user": "alice"}).encode())
        self.truth = ready_backend(self.config.truth)
        self.target = ready_backend(self.config.target)
        self.client._backends_ready((self.truth, self.target))
        # Comparing: the target gets the truth's output settings before the session.
        self.assertEqual(
            client_frames(self.truth.transport.value()), [f.Query("SHOW extra_float_digits")]
        )
        self.truth.dataReceived(answer(b"1", tag="SHOW"))
        self.assertEqual(
            client_frames(self.target.transport.value()), [f.Query("SET extra_float_digits = 1")]
        )
        self.target.dataReceived(done("SET", "I"))
        self.assertIsNotNone(self.client.session)
        for backend in (self.truth, self.target):
            backend.transport.clear()
        self.transport.clear()

    def query(self, sql: str) -> None:
        self.client.dataReceived(f.encode(f.Query(sql)))

    def test_equal_answers_are_held_then_delivered_unchanged(self) -> None:
        self.query("select v from t")
        self.truth.dataReceived(answer(b"a"))
        self.assertEqual(self.transport.value(), b"", "held until the target answers")
        self.target.dataReceived(answer(b"a"))
        self.assertEqual(self.transport.value(), answer(b"a"))

    def test_a_difference_becomes_tw001_with_the_real_ready_for_query(self) -> None:
        self.query("select v from t")
        self.truth.dataReceived(answer(b"a"))
        self.target.dataReceived(answer(b"b"))
        error, ready = frames(self.transport.value())
        self.assertEqual(error.sqlstate, "TW001")
        self.assertIn("truthdb", error.message)
        self.assertIn("targetdb", error.message)
        self.assertIn("'a'", error.fields["D"])
        self.assertEqual(ready, b.ReadyForQuery("I"))

    def test_an_autocommit_write_is_wrapped_and_rolled_back_on_a_difference(self) -> None:
        self.query("insert into t values (1)")
        for backend in (self.truth, self.target):
            sent = client_frames(backend.transport.value())
            self.assertEqual(sent, [f.Query("BEGIN"), f.Query("insert into t values (1)")])
            backend.transport.clear()
        self.truth.dataReceived(done("BEGIN", "T") + done("INSERT 0 1", "T"))
        self.target.dataReceived(
            done("BEGIN", "T")
            + f.encode(b.ErrorResponse.make("ERROR", "42P01", "no t"))
            + f.encode(b.ReadyForQuery("E"))
        )
        for backend in (self.truth, self.target):
            self.assertEqual(client_frames(backend.transport.value()), [f.Query("ROLLBACK")])
        self.assertEqual(self.transport.value(), b"", "nothing before the ROLLBACK is done")
        self.truth.dataReceived(done("ROLLBACK", "I"))
        self.target.dataReceived(done("ROLLBACK", "I"))
        error, ready = frames(self.transport.value())
        self.assertEqual(error.sqlstate, "TW002")
        self.assertEqual(ready, b.ReadyForQuery("I"))

    def test_an_equal_wrapped_write_commits_and_the_client_sees_its_own_answer(self) -> None:
        self.query("insert into t values (1)")
        for backend in (self.truth, self.target):
            backend.transport.clear()
            backend.dataReceived(done("BEGIN", "T") + done("INSERT 0 1", "T"))
        for backend in (self.truth, self.target):
            self.assertEqual(client_frames(backend.transport.value()), [f.Query("COMMIT")])
            backend.dataReceived(done("COMMIT", "I"))
        self.assertEqual(self.transport.value(), done("INSERT 0 1", "I"))

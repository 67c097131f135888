"""The Twisted layer without sockets: ClientProtocol, BackendProtocol and Session wired to
StringTransports and a MemoryReactorClock. No reactor runs."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twinkly.config.schema import loads
from twinkly.proxy.backend import BackendError, BackendProtocol, startup_parameters
from twinkly.testing import (
    CONFIG,
    ClientHarness,
    TCPStringTransport,
    client_frames,
    frames,
)
from twinkly.wire import backend as b
from twinkly.wire import frontend as f


class BackendProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = loads(CONFIG)

    def test_startup_sends_backend_own_credentials(self) -> None:
        clock = MemoryReactorClock()
        protocol = BackendProtocol(
            self.config.truth, {"user": "u", "database": "d"}, clock, 1 << 20
        )
        transport = TCPStringTransport()
        protocol.makeConnection(transport)
        startup = transport.value()
        self.assertIn(b"user\x00u\x00", startup)
        transport.clear()
        protocol.dataReceived(f.encode(b.Authentication(b.AUTH_CLEARTEXT)))
        self.assertEqual(client_frames(transport.value()), [f.PasswordMessage(b"pw\x00")])
        results: list[object] = []
        protocol.ready.addCallback(results.append)
        protocol.dataReceived(
            f.encode(b.Authentication(b.AUTH_OK))
            + f.encode(b.ParameterStatus("server_version", "15.0"))
            + f.encode(b.BackendKeyData(77, b"\x01\x02\x03\x04"))
            + f.encode(b.ReadyForQuery("I"))
        )
        self.assertEqual(results, [protocol])
        self.assertEqual(protocol.key, b.BackendKeyData(77, b"\x01\x02\x03\x04"))
        self.assertEqual(protocol.server_parameters, {"server_version": "15.0"})

    def test_login_error_names_the_backend(self) -> None:
        clock = MemoryReactorClock()
        protocol = BackendProtocol(self.config.target, {"user": "u2"}, clock, 1 << 20)
        protocol.makeConnection(TCPStringTransport())
        protocol.dataReceived(
            f.encode(b.ErrorResponse.make("FATAL", "28P01", "password authentication failed"))
        )
        failure = self.failureResultOf(protocol.ready, BackendError)
        self.assertIn("targetdb", str(failure.value))
        self.assertEqual(failure.value.sqlstate, "28P01")

    def test_startup_timeout(self) -> None:
        clock = MemoryReactorClock()
        protocol = BackendProtocol(self.config.truth, {"user": "u"}, clock, 1 << 20)
        protocol.makeConnection(TCPStringTransport())
        clock.advance(self.config.truth.connect_timeout + 1)
        failure = self.failureResultOf(protocol.ready, BackendError)
        self.assertIn("did not finish start-up", str(failure.value))


class ClientProtocolTests(SynchronousTestCase):
    def test_ssl_and_gss_requests_are_declined_without_a_certificate(self) -> None:
        h = ClientHarness()
        h.client.dataReceived(f.SSLRequest().encode())
        self.assertEqual(h.transport.value(), b"N")
        h.transport.clear()
        h.client.dataReceived(f.GSSENCRequest().encode())
        self.assertEqual(h.transport.value(), b"N")

    def test_an_impossible_startup_length_is_closed_without_a_word(self) -> None:
        """As PostgreSQL does: node-postgres sends its Terminate before its start-up when
        it ends at once, and must not get an error for it."""
        for first in (b"X\x00\x00\x00\x04", b"\x00\x00\x00\x03", b"\x7f\xff\xff\xff"):
            h = ClientHarness()
            h.client.dataReceived(first)
            self.assertEqual(h.transport.value(), b"")
            self.assertTrue(h.transport.disconnecting)

    def test_a_bad_startup_layout_still_gets_a_fatal_error(self) -> None:
        h = ClientHarness()
        h.client.dataReceived(f.StartupMessage({"database": "app"}).encode())
        (error,) = frames(h.transport.value())
        self.assertEqual(error.fields["S"], "FATAL")
        self.assertIn(error.sqlstate, ("08P01", "28000"))
        self.assertTrue(h.transport.disconnecting)

    def test_trust_startup_then_session(self) -> None:
        h = ClientHarness()
        h.startup(database="appdb", application_name="x")
        self.assertEqual(frames(h.transport.value()), [b.Authentication(b.AUTH_OK)])
        self.assertEqual(h.transport.producerState, "paused")
        h.transport.clear()
        truth, target = h.connect_backends()
        sent = frames(h.transport.value())
        self.assertEqual(sent[0], b.ParameterStatus("server_version", "15.0"))
        self.assertIsInstance(sent[1], b.BackendKeyData)
        # The truth's process id (what pg_backend_pid() and notifications show) with
        # Twinkly's own secret: a cancel must come through Twinkly to reach both.
        self.assertEqual(sent[1].process_id, 77)
        self.assertNotEqual(sent[1].secret_key, b"\x01\x02\x03\x04")
        self.assertEqual(sent[2], b.ReadyForQuery("I"))
        self.assertEqual(h.transport.producerState, "producing")
        self.assertIn(sent[1].process_id, h.factory.sessions)

        h.transport.clear()
        query = f.encode(f.Query("select 1"))
        h.client.dataReceived(query)
        self.assertEqual(truth.transport.value(), query)
        self.assertEqual(target.transport.value(), query)
        answer = (
            f.encode(b.RowDescription((b.Column("x", type_oid=23),)))
            + f.encode(b.DataRow((b"1",)))
            + f.encode(b.CommandComplete("SELECT 1"))
            + f.encode(b.ReadyForQuery("I"))
        )
        truth.dataReceived(answer)
        self.assertEqual(h.transport.value(), answer)
        self.assertEqual(h.observer.paired, 0)
        target.dataReceived(answer)
        self.assertEqual(h.transport.value(), answer, "target bytes never reach the client")
        self.assertEqual((h.observer.paired, h.observer.syncs), (1, 1))

    def test_password_auth_rejects_wrong_password(self) -> None:
        h = ClientHarness(
            CONFIG + "proxy.auth { method = password, users = [{name = alice, password = s3cret}] }"
        )
        h.startup()
        self.assertEqual(frames(h.transport.value()), [b.Authentication(b.AUTH_CLEARTEXT)])
        h.transport.clear()
        h.client.dataReceived(f.encode(f.PasswordMessage.cleartext("wrong")))
        (error,) = frames(h.transport.value())
        self.assertEqual((error.severity, error.sqlstate), ("FATAL", "28P01"))
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.requested, [], "no backend is contacted before the client logs in")

    def test_backend_unreachable_names_it(self) -> None:
        h = ClientHarness()
        h.startup()
        h.transport.clear()
        h.opening.errback(BackendError("cannot connect to targetdb (127.0.0.1:5002): refused"))
        (error,) = frames(h.transport.value())
        self.assertEqual(error.sqlstate, "08006")
        self.assertIn("targetdb", error.message)
        self.assertTrue(h.transport.disconnecting)

    def test_malformed_message_gets_08P01_and_closes(self) -> None:
        h = ClientHarness()
        h.startup()
        truth, target = h.connect_backends()
        h.transport.clear()
        h.client.dataReceived(b"Q\x00\x00\x00\x02")
        (error,) = frames(h.transport.value())
        self.assertEqual(error.sqlstate, "08P01")
        self.assertTrue(h.transport.disconnecting)
        self.assertTrue(truth.transport.disconnecting)
        self.assertTrue(target.transport.disconnecting)
        self.assertNotIn(b"Q\x00\x00\x00\x02", truth.transport.value())

    def test_oversized_startup_packet(self) -> None:
        """Past PostgreSQL's 10,000 bytes: closed without a reply, as the server does."""
        h = ClientHarness()
        h.client.dataReceived(b"\x00\x01\x00\x00" + b"\x00" * 8)
        self.assertEqual(h.transport.value(), b"")
        self.assertTrue(h.transport.disconnecting)

    def test_protocol_3_2_is_negotiated_down(self) -> None:
        h = ClientHarness()
        packet = f.StartupMessage({"user": "a", "_pq_.x": "1"}, protocol=(3 << 16) | 2)
        h.client.dataReceived(packet.encode())
        negotiate = frames(h.transport.value())[0]
        self.assertEqual(negotiate, b.NegotiateProtocolVersion(0, ("_pq_.x",)))
        forwarded = startup_parameters(h.config.truth, h.requested[0])
        self.assertNotIn("_pq_.x", forwarded)
        self.assertEqual((forwarded["user"], forwarded["database"]), ("u", "d"))

    def test_process_id_taken_falls_back_to_a_key_of_twinklys(self) -> None:
        """Two sessions cannot share a process id (a truth that reports one already in
        use, or none at all): the second gets a random one."""
        h = ClientHarness()
        h.startup()
        h.transport.clear()
        h.connect_backends()
        first = frames(h.transport.value())[1]
        h.opening = defer.Deferred()
        h.client = h.factory.buildProtocol(None)
        h.transport = TCPStringTransport()
        h.client.makeConnection(h.transport)
        h.startup()
        h.transport.clear()
        h.connect_backends()
        second = frames(h.transport.value())[1]
        self.assertEqual(first.process_id, 77)
        self.assertNotEqual(second.process_id, 77)
        self.assertEqual(set(h.factory.sessions), {first.process_id, second.process_id})

    def test_cancel_request_reaches_the_session(self) -> None:
        h = ClientHarness()
        h.startup()
        h.transport.clear()
        h.connect_backends()
        key = frames(h.transport.value())[1]
        cancelled: list[object] = []
        session = h.factory.sessions[key.process_id][1]
        session.cancel = cancelled.append  # type: ignore[method-assign]
        other = h.factory.buildProtocol(None)
        other.makeConnection(TCPStringTransport())
        other.dataReceived(f.CancelRequest(key.process_id, b"\x00\x00\x00\x00").encode())
        self.assertEqual(cancelled, [], "a wrong secret cancels nothing")
        other = h.factory.buildProtocol(None)
        other.makeConnection(TCPStringTransport())
        other.dataReceived(f.CancelRequest(key.process_id, key.secret_key).encode())
        self.assertEqual(cancelled, [h.reactor])

    def test_truth_closing_after_its_fatal_error_adds_no_error_of_twinklys(self) -> None:
        """pg_terminate_backend(): the server sends FATAL 57P01 and closes; the client
        gets that one error, as from the server itself (a second one would be taken as
        the answer to its next query: node-postgres' connection-pool/error-tests.js)."""
        h = ClientHarness()
        h.startup()
        truth, _ = h.connect_backends()
        h.client.dataReceived(f.encode(f.Query("select pg_terminate_backend(pg_backend_pid())")))
        h.transport.clear()
        fatal = f.encode(
            b.ErrorResponse.make(
                "FATAL", "57P01", "terminating connection due to administrator command"
            )
        )
        truth.dataReceived(fatal)
        truth.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.transport.value(), fatal)
        self.assertTrue(h.transport.disconnecting)

    def test_truth_closing_unannounced_gets_an_error_of_twinklys(self) -> None:
        h = ClientHarness()
        h.startup()
        truth, _ = h.connect_backends()
        h.transport.clear()
        truth.connectionLost(Failure(ConnectionDone()))
        (error,) = frames(h.transport.value())
        self.assertEqual((error.fields["S"], error.sqlstate), ("FATAL", "08006"))
        self.assertTrue(h.transport.disconnecting)

    def test_client_disconnect_closes_both_backends(self) -> None:
        h = ClientHarness()
        h.startup()
        truth, target = h.connect_backends()
        h.client.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(truth.transport.disconnecting)
        self.assertTrue(target.transport.disconnecting)
        self.assertEqual(client_frames(truth.transport.value()), [f.Terminate()])
        self.assertEqual(h.factory.sessions, {})


class SessionFlowTests(SynchronousTestCase):
    def setUp(self) -> None:
        # The smallest lag in bytes the configuration accepts, so that 30 rows exceed it.
        self.h = ClientHarness(CONFIG + "comparison.max-target-lag-bytes = 1024\n")
        self.h.startup()
        self.truth, self.target = self.h.connect_backends()
        self.session = self.h.client.session

    def test_slow_client_pauses_the_truth(self) -> None:
        self.h.transport.producer.pauseProducing()  # the client's buffer is full
        self.assertEqual(self.truth.transport.producerState, "paused")
        self.h.transport.producer.resumeProducing()
        self.assertEqual(self.truth.transport.producerState, "producing")

    def test_target_far_behind_in_bytes_pauses_the_truth(self) -> None:
        self.h.client.dataReceived(f.encode(f.Query("select big")))
        rows = b"".join(f.encode(b.DataRow((b"x" * 100,))) for _ in range(30))
        self.truth.dataReceived(f.encode(b.RowDescription((b.Column("v"),))) + rows)
        self.assertEqual(self.truth.transport.producerState, "paused")
        self.h.transport.producer.resumeProducing()  # a drained client does not override it
        self.assertEqual(self.truth.transport.producerState, "paused")
        end = f.encode(b.CommandComplete("SELECT 30")) + f.encode(b.ReadyForQuery("I"))
        self.truth.dataReceived(end)
        self.target.dataReceived(f.encode(b.RowDescription((b.Column("v"),))) + rows + end)
        self.assertEqual(self.truth.transport.producerState, "producing")

    def test_a_target_that_already_answered_never_stalls_the_truth(self) -> None:
        self.h.client.dataReceived(f.encode(f.Query("select big")))
        head = f.encode(b.RowDescription((b.Column("v"),)))
        rows = b"".join(f.encode(b.DataRow((b"x" * 100,))) for _ in range(30))
        end = f.encode(b.CommandComplete("SELECT 30")) + f.encode(b.ReadyForQuery("I"))
        self.target.dataReceived(head + rows + end)  # the target was quicker
        self.truth.dataReceived(head + rows)
        self.assertEqual(self.truth.transport.producerState, "producing")

    def test_lagging_target_pauses_the_client_then_resumes(self) -> None:
        select = f.encode(f.Query("select 1"))
        answer = f.encode(b.CommandComplete("SELECT 0")) + f.encode(b.ReadyForQuery("I"))
        for _ in range(4):
            self.h.client.dataReceived(select)
            self.truth.dataReceived(answer)
        self.assertEqual(self.h.transport.producerState, "paused")
        self.assertIn("target-lag", self.session.gate.reasons)
        for _ in range(4):
            self.target.dataReceived(answer)
        self.assertEqual(self.h.transport.producerState, "producing")
        self.assertEqual(self.h.observer.paired, 4)

    def test_target_far_ahead_is_paused(self) -> None:
        select = f.encode(f.Query("select 1"))
        answer = f.encode(b.CommandComplete("SELECT 0")) + f.encode(b.ReadyForQuery("I"))
        for _ in range(3):
            self.h.client.dataReceived(select)
            self.target.dataReceived(answer)
        self.assertEqual(self.target.transport.producerState, "paused")
        for _ in range(3):
            self.truth.dataReceived(answer)
        self.assertEqual(self.target.transport.producerState, "producing")

    def test_copy_the_truth_refused_is_failed_on_the_target(self) -> None:
        self.h.client.dataReceived(f.encode(f.Query("copy t from stdin")))
        self.truth.dataReceived(
            f.encode(b.ErrorResponse.make("ERROR", "42P01", 'relation "t" does not exist'))
            + f.encode(b.ReadyForQuery("I"))
        )
        self.target.dataReceived(f.encode(b.CopyInResponse(0, (0,))))
        sent = client_frames(self.target.transport.value())
        self.assertEqual(sent[0], f.Query("copy t from stdin"))
        self.assertIsInstance(sent[1], f.CopyFail)
        self.target.dataReceived(
            f.encode(b.ErrorResponse.make("ERROR", "57014", "COPY from stdin failed"))
            + f.encode(b.ReadyForQuery("I"))
        )
        self.assertEqual((self.h.observer.paired, self.h.observer.syncs), (1, 1))

    def test_target_loss_keeps_the_session_on_the_truth(self) -> None:
        self.target.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.session.target)
        self.assertIsNotNone(self.h.observer.abandoned)
        query = f.encode(f.Query("select 1"))
        self.h.client.dataReceived(query)
        self.assertEqual(self.truth.transport.value(), query)
        self.assertFalse(self.h.transport.disconnecting)

    def test_truth_loss_ends_the_session_with_an_error(self) -> None:
        self.h.transport.clear()
        self.truth.connectionLost(Failure(ConnectionDone()))
        (error,) = frames(self.h.transport.value())
        self.assertEqual(error.sqlstate, "08006")
        self.assertIn("truthdb", error.message)
        self.assertTrue(self.h.transport.disconnecting)


class CopyHoldTests(SynchronousTestCase):
    """COPY FROM STDIN that the truth refuses and a slower target accepts: the client's
    next messages must not reach the target while it waits for COPY data."""

    def setUp(self) -> None:
        self.h = ClientHarness()
        self.h.startup()
        self.truth, self.target = self.h.connect_backends()

    def test_next_statement_waits_for_the_target_to_leave_copy(self) -> None:
        copy = f.encode(f.Query("copy t from stdin"))
        self.h.client.dataReceived(copy)
        self.truth.dataReceived(
            f.encode(b.ErrorResponse.make("ERROR", "42P01", 'relation "t" does not exist'))
            + f.encode(b.ReadyForQuery("I"))
        )
        insert = f.encode(f.Query("insert into shared values (1)"))
        self.h.client.dataReceived(insert)
        self.assertEqual(self.target.transport.value(), copy, "the insert is held back")
        self.target.dataReceived(f.encode(b.CopyInResponse(0, (0,))))
        sent = client_frames(self.target.transport.value())
        self.assertEqual(
            [type(m) for m in sent], [f.Query, f.CopyFail, f.Query], "CopyFail, then the insert"
        )
        self.assertEqual(sent[2], f.Query("insert into shared values (1)"))

    def test_both_copy_and_the_data_flows_to_both(self) -> None:
        copy = f.encode(f.Query("copy t from stdin"))
        self.h.client.dataReceived(copy)
        self.truth.dataReceived(f.encode(b.CopyInResponse(0, (0,))))
        data = f.encode(f.CopyData(b"1\n")) + f.encode(f.CopyDone())
        self.h.client.dataReceived(data)
        self.assertEqual(self.target.transport.value(), copy)
        self.target.dataReceived(f.encode(b.CopyInResponse(0, (0,))))
        self.assertEqual(self.target.transport.value(), copy + data)
        self.assertEqual(self.truth.transport.value(), copy + data)

    def test_target_refuses_too_and_the_hold_ends(self) -> None:
        self.h.client.dataReceived(f.encode(f.Query("copy t from stdin")))
        refusal = f.encode(b.ErrorResponse.make("ERROR", "42P01", "no t")) + f.encode(
            b.ReadyForQuery("I")
        )
        self.truth.dataReceived(refusal)
        self.h.client.dataReceived(f.encode(f.Query("select 1")))
        self.target.dataReceived(refusal)
        self.assertEqual(
            client_frames(self.target.transport.value()),
            [f.Query("copy t from stdin"), f.Query("select 1")],
        )

    def test_client_leaving_during_a_hold_loses_no_copy_data(self) -> None:
        copy = f.encode(f.Query("copy t from stdin"))
        self.h.client.dataReceived(copy)
        self.truth.dataReceived(f.encode(b.CopyInResponse(0, (0,))))
        data = f.encode(f.CopyData(b"1\n")) + f.encode(f.CopyDone())
        self.h.client.dataReceived(data)
        self.truth.dataReceived(
            f.encode(b.CommandComplete("COPY 1")) + f.encode(b.ReadyForQuery("I"))
        )
        self.h.client.connectionLost(Failure(ConnectionDone()))  # gone, without a Terminate
        self.assertEqual(self.target.transport.value(), copy, "still held")
        self.assertFalse(self.target.transport.disconnecting, "the target is drained")
        self.target.dataReceived(f.encode(b.CopyInResponse(0, (0,))))
        self.assertEqual(self.target.transport.value(), copy + data + f.encode(f.Terminate()))

    def test_truth_several_copies_ahead_does_not_fail_the_targets_copy(self) -> None:
        """The truth finished COPY #2 and started #3 before the slow target began #2:
        the target's COPY #2 is one the truth ran, so it must not be failed."""
        begin = f.encode(b.CopyInResponse(0, (0,)))
        done = f.encode(b.CommandComplete("COPY 1")) + f.encode(b.ReadyForQuery("I"))
        data = f.encode(f.CopyData(b"1\n")) + f.encode(f.CopyDone())
        copy = f.encode(f.Query("copy t from stdin"))
        self.h.client.dataReceived(copy)  # COPY #1: both start it before any data
        self.truth.dataReceived(begin)
        self.target.dataReceived(begin)
        self.h.client.dataReceived(data)
        self.truth.dataReceived(done)
        self.h.client.dataReceived(copy)  # COPY #2, held from the target
        self.truth.dataReceived(begin)
        self.h.client.dataReceived(data)
        self.truth.dataReceived(done)
        self.h.client.dataReceived(copy)  # COPY #3: the truth is copying again
        self.truth.dataReceived(begin)
        self.target.dataReceived(done)  # the target ends COPY #1...
        self.target.dataReceived(begin)  # ...and only now begins COPY #2
        sent = client_frames(self.target.transport.value())
        self.assertNotIn(f.CopyFail, [type(m) for m in sent])
        self.assertEqual([type(m) for m in sent].count(f.CopyDone), 2)

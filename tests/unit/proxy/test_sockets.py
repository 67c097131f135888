"""immediate_writer: bytes leave at once when nothing is queued, and order is kept when
something is. A real connected socket pair, a MemoryReactor, no reactor running."""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twinkly.proxy import sockets
from twinkly.proxy.sockets import immediate_writer


class ImmediateWriterCases:
    """Each case runs with both writers (the C one skipped when not built)."""

    writer: object

    def setUp(self) -> None:
        self.patch(sockets, "WRITER", self.writer)  # type: ignore[attr-defined]
        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.peer.settimeout(5)
        self.connection = tcp.Connection(ours, Protocol(), MemoryReactor())
        self.connection.connected = True
        self.write = immediate_writer(self.connection)
        self.addCleanup(ours.close)
        self.addCleanup(self.peer.close)

    def read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            data += self.peer.recv(size - len(data))
        return data

    def test_sends_without_buffering(self) -> None:
        self.write(b"hello")
        self.assertEqual(self.read(5), b"hello")
        self.assertEqual((self.connection.dataBuffer, self.connection._tempDataBuffer), (b"", []))

    def test_queued_bytes_keep_their_order(self) -> None:
        self.connection.write(b"first ")  # buffered by Twisted, not yet sent
        self.write(b"second")
        self.assertEqual(self.connection._tempDataBuffer, [b"first ", b"second"])
        self.connection.doWrite()
        self.assertEqual(self.read(12), b"first second")

    def test_what_the_kernel_refuses_is_buffered(self) -> None:
        self.connection.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = bytes(range(256)) * 8192  # 2 MiB: more than the socket takes at once
        self.write(big)
        queued = len(self.connection.dataBuffer) + self.connection._tempDataLen
        self.assertGreater(queued, 0)
        received = bytearray()
        while len(received) < len(big):
            if self.connection.dataBuffer or self.connection._tempDataBuffer:
                self.connection.doWrite()
            received += self.peer.recv(65536)
        self.assertEqual(bytes(received), big)

    def test_other_transports_use_their_own_write(self) -> None:
        transport = StringTransport()
        self.assertEqual(immediate_writer(transport), transport.write)

    def test_a_closing_or_closed_connection_buffers(self) -> None:
        written: list[bytes] = []
        self.connection.write = written.append  # type: ignore[method-assign]
        write = immediate_writer(self.connection)
        self.connection.disconnecting = True
        write(b"late")
        self.connection.disconnecting = False
        self.connection.connected = False
        write(b"later")
        self.assertEqual(written, [b"late", b"later"])

    def test_a_socket_error_goes_to_twisted(self) -> None:
        written: list[bytes] = []
        self.connection.write = written.append  # type: ignore[method-assign]
        write = immediate_writer(self.connection)
        self.peer.close()
        self.connection.socket.shutdown(socket.SHUT_WR)  # send() now fails: EPIPE
        write(b"lost")
        self.assertEqual(written, [b"lost"])


class ImmediateWriterTestsPython(ImmediateWriterCases, SynchronousTestCase):
    writer = staticmethod(sockets.PYTHON_WRITER)


class ImmediateWriterTestsC(ImmediateWriterCases, SynchronousTestCase):
    writer = sockets.C_WRITER
    if sockets.C_WRITER is None:
        skip = "the C writer was not built"


class Recorder(Protocol):
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.data: list[bytes] = []
        self.lost: list = []

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)
        if self.fail:
            1 / 0  # noqa: B018 - the protocol's own bug

    def connectionLost(self, reason: object = None) -> None:
        self.lost.append(reason)


class DirectDispatchCases:
    """direct_dispatch: an epoll reactor's readiness events reach doRead without the
    legacy log context; other reactors are left alone. The reactor is never run. Every
    case runs with each implementation of one poll's dispatch (C skipped when not
    built)."""

    dispatch: object

    def setUp(self) -> None:
        from twinkly.proxy import sockets

        self.patch(sockets, "DISPATCH", self.dispatch)  # type: ignore[attr-defined]

    def test_epoll_events_reach_the_reader(self) -> None:
        from twisted.internet.epollreactor import EPollReactor

        from twinkly.proxy.sockets import direct_dispatch

        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        self.addCleanup(reactor.removeAll)  # cleanups run last first: before the closes
        seen: list[bytes] = []

        class Reader:
            def fileno(self) -> int:
                return ours.fileno()

            def doRead(self) -> None:
                seen.append(ours.recv(100))

            def logPrefix(self) -> str:
                return "reader"

        self.assertTrue(direct_dispatch(reactor))
        self.assertFalse(direct_dispatch(reactor))  # once only
        reactor.addReader(Reader())
        peer.send(b"hello")
        reactor.doIteration(0)
        self.assertEqual(seen, [b"hello"])

    def _connection(self, protocol: Protocol) -> tuple[object, socket.socket, list]:
        """A tcp.Server over one end of a socket pair, on a direct-dispatch epoll reactor
        whose own _doReadOrWrite records every event it is given."""
        from twisted.internet.epollreactor import EPollReactor

        from twinkly.proxy.sockets import direct_dispatch

        ours, peer = socket.socketpair()
        ours.setblocking(False)
        self.addCleanup(peer.close)
        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        self.addCleanup(reactor.removeAll)
        generic: list = []
        reactor._doReadOrWrite = lambda *event: generic.append(event)  # type: ignore[method-assign]
        direct_dispatch(reactor)
        connection = tcp.Server(ours, protocol, ("127.0.0.1", 1), None, 1, reactor)
        protocol.makeConnection(connection)
        self.addCleanup(lambda: connection.connected and connection.abortConnection())
        return reactor, peer, generic

    def test_a_plain_read_goes_straight_to_the_protocol(self) -> None:
        protocol = Recorder()
        reactor, peer, generic = self._connection(protocol)
        peer.send(b"hello")
        reactor.doIteration(0)
        self.assertEqual(protocol.data, [b"hello"])
        self.assertEqual(generic, [])  # not through Twisted's own dispatch

    def test_end_of_stream_loses_the_connection_cleanly(self) -> None:
        protocol = Recorder()
        reactor, peer, generic = self._connection(protocol)
        peer.shutdown(socket.SHUT_WR)  # the peer's FIN: a read event, and recv gives b""
        reactor.doIteration(0)
        self.assertEqual(generic, [])
        self.assertEqual(len(protocol.lost), 1)
        self.assertTrue(protocol.lost[0].check(ConnectionDone))

    def test_an_exception_in_the_protocol_is_logged_and_disconnects(self) -> None:
        protocol = Recorder(fail=True)
        reactor, peer, _ = self._connection(protocol)
        peer.send(b"boom")
        reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(protocol.lost), 1)
        self.assertTrue(protocol.lost[0].check(ZeroDivisionError))

    def test_other_reactors_are_left_alone(self) -> None:
        from twinkly.proxy.sockets import direct_dispatch

        reactor = MemoryReactor()
        self.assertFalse(direct_dispatch(reactor))

    def test_an_endpoint_wrapper_is_skipped(self) -> None:
        from twisted.internet import defer
        from twisted.internet.endpoints import _WrappingProtocol

        protocol = Recorder()
        wrapper = _WrappingProtocol(defer.Deferred(), protocol)
        wrapper.dataReceived = None  # type: ignore[method-assign]  # never called
        reactor, peer, _generic = self._connection(wrapper)
        peer.send(b"hello")
        reactor.doIteration(0)
        self.assertEqual(protocol.data, [b"hello"])

    def test_an_error_from_other_events_is_logged_and_the_loop_goes_on(self) -> None:
        protocol = Recorder()
        reactor, peer, _generic = self._connection(protocol)

        def broken(*event: object) -> None:
            raise RuntimeError("a bug in a writer")

        reactor._doReadOrWrite = broken  # type: ignore[method-assign]
        connection = next(c for c in reactor._selectables.values() if isinstance(c, tcp.Server))
        fd = connection.fileno()
        sockets.DISPATCH([(fd, 4), (fd, 1)], reactor._selectables, broken,
                         reactor._disconnectSelectable)  # fmt: skip
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # type: ignore[attr-defined]
        peer.send(b"after")
        sockets.DISPATCH([(fd, 1)], reactor._selectables, broken,
                         reactor._disconnectSelectable)  # fmt: skip
        self.assertEqual(protocol.data, [b"after"])


class DirectDispatchTestsPython(DirectDispatchCases, SynchronousTestCase):
    dispatch = staticmethod(sockets.PYTHON_DISPATCH)


class DirectDispatchTestsC(DirectDispatchCases, SynchronousTestCase):
    dispatch = staticmethod(sockets.C_DISPATCH) if sockets.C_DISPATCH else None

    if sockets.C_DISPATCH is None:
        skip = "the C dispatch was not built"


class DispatchSelectionTests(SynchronousTestCase):
    def test_the_c_loop_runs_with_the_accelerator(self) -> None:
        from twinkly.wire import accel

        c = accel.IMPLEMENTATION == "c" and sockets.C_DISPATCH is not None
        self.assertIs(sockets.DISPATCH, sockets.C_DISPATCH if c else sockets.PYTHON_DISPATCH)
        self.assertIs(sockets.WRITER, sockets.C_WRITER if c else sockets.PYTHON_WRITER)

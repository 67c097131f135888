"""Writing to a TCP transport without waiting for the next reactor turn, and reading
from one without Twisted's per-event wrapping (``direct_dispatch``).

Twisted's ``transport.write`` only buffers; the bytes leave on the next reactor
iteration, after two epoll_ctl calls to watch the socket for writability and stop
watching it again. On Twinkly's hot path every statement costs three such writes
(client to both backends, truth to client), so that round trip is a large share of the
proxy's latency. ``immediate_writer`` sends straight away when nothing is queued ahead,
and hands whatever the kernel did not take to ``transport.write``, which then buffers,
applies producer back-pressure and reports errors exactly as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from select import EPOLLIN

from twisted.internet import main, tcp
from twisted.python import log as legacy_log


def immediate_writer(transport: object) -> Callable[[bytes], None]:
    """A write function for ``transport``: immediate for a plain TCP connection,
    ``transport.write`` itself for anything else (TLS, test transports)."""
    if not isinstance(transport, tcp.Connection) or not all(
        hasattr(transport, name) for name in ("dataBuffer", "_tempDataBuffer", "socket", "TLS")
    ):
        return transport.write  # type: ignore[attr-defined, no-any-return]
    buffered_write = transport.write
    connection = transport

    def write(data: bytes) -> None:
        if (
            connection._tempDataBuffer
            or connection.dataBuffer
            or connection.TLS
            or connection.disconnecting
            or not connection.connected
        ):
            buffered_write(data)
            return
        try:
            sent = connection.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            buffered_write(data)  # let Twisted see and report the error its own way
            return
        if sent < len(data):
            buffered_write(data[sent:])

    return write


def direct_dispatch(reactor: object) -> bool:
    """Make an epoll reactor dispatch readiness events itself, with the fewest calls.

    Twisted wraps every event in ``twisted.python.log.callWithLogger`` (a log context:
    a dict copy, a logPrefix call, two context-stack operations), then calls
    ``_doReadOrWrite``, ``doRead`` and ``_dataReceived`` before the protocol sees the
    bytes: about a dozen calls per read, three reads or more per statement. Twinkly logs
    with ``twisted.logger``, which never reads that context. A plain read event of a
    connected TCP connection (``tcp.Server``/``tcp.Client``, whose ``doRead`` is
    Twisted's own) is handled here as ``Connection.doRead`` would: ``recv``, then the
    protocol's ``dataReceived``; end of stream, a socket error or an exception from the
    protocol disconnects it as ``_doReadOrWrite`` does. Every other event goes to
    ``_doReadOrWrite``. Returns whether the reactor was changed (only Twisted's
    EPollReactor is).
    """
    from twisted.internet.epollreactor import EPollReactor

    if not isinstance(reactor, EPollReactor) or getattr(reactor, "_twinkly_direct", False):
        return False
    poll = reactor._poller.poll
    selectables = reactor._selectables
    handle = reactor._doReadOrWrite
    disconnect = reactor._disconnectSelectable
    readable = EPOLLIN
    plain = (tcp.Server, tcp.Client)

    def do_poll(timeout: float | None) -> None:
        try:
            events = poll(-1 if timeout is None else timeout, len(selectables))
        except InterruptedError:
            return
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                if event == readable and type(selectable) in plain and selectable.connected:
                    _read(selectable, disconnect)
                else:
                    handle(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                _log_error(selectable)

    reactor.doPoll = reactor.doIteration = do_poll  # type: ignore[method-assign]
    reactor._twinkly_direct = True  # type: ignore[attr-defined]
    return True


def _read(connection: tcp.Connection, disconnect: Callable[..., None]) -> None:
    """``Connection.doRead``, and what ``_doReadOrWrite`` does with its outcome."""
    try:
        data = connection.socket.recv(connection.bufferSize)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        disconnect(connection, main.CONNECTION_LOST, False)
        return
    if not data:
        disconnect(connection, main.CONNECTION_DONE, True)  # a half-close, if it takes one
        return
    try:
        connection.protocol.dataReceived(data)
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        _log_error(connection)
        disconnect(connection, e, False)


def _log_error(selectable: object) -> None:
    """Log the exception being handled, as Twisted's dispatch does."""
    try:
        system = selectable.logPrefix()  # type: ignore[attr-defined]
    except Exception:
        system = "(buggy logPrefix method)"
    legacy_log.err(system=system)

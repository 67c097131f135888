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
from twisted.internet.endpoints import _WrappingProtocol
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from twinkly.wire import accel


def immediate_writer(transport: object) -> Callable[[bytes], None]:
    """A write function for ``transport``: immediate for a plain TCP connection
    (``Writer``: C when built, else ``python_writer``), ``transport.write`` itself for
    anything else (TLS, test transports)."""
    if not isinstance(transport, tcp.Connection) or not all(
        hasattr(transport, name) for name in ("dataBuffer", "_tempDataBuffer", "socket", "TLS")
    ):
        return transport.write  # type: ignore[attr-defined, no-any-return]
    return WRITER(transport, transport.write)


def python_writer(
    connection: tcp.Connection, buffered_write: Callable[[bytes], None]
) -> Callable[[bytes], None]:
    """The reference of ``_dispatch.c``'s Writer."""

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
    Twisted's own) is handled as ``Connection.doRead`` would: ``recv``, then the
    protocol's ``dataReceived`` (a connected endpoint's ``_WrappingProtocol`` only
    forwards it, so it is skipped); end of stream, a socket error or an exception from
    the protocol disconnects it as ``_doReadOrWrite`` does. Every other event goes to
    ``_doReadOrWrite``. One poll's events are dispatched by ``dispatch``: C
    (``_dispatch.c``) when built, else ``python_dispatch``; the same cases test both.
    Returns whether the reactor was changed (only Twisted's EPollReactor is).
    """
    from twisted.internet.epollreactor import EPollReactor

    if not isinstance(reactor, EPollReactor) or getattr(reactor, "_twinkly_direct", False):
        return False
    poll = reactor._poller.poll
    selectables = reactor._selectables
    handle = reactor._doReadOrWrite
    disconnect = reactor._disconnectSelectable
    dispatch = DISPATCH

    def do_poll(timeout: float | None) -> None:
        try:
            events = poll(-1 if timeout is None else timeout, len(selectables))
        except InterruptedError:
            return
        dispatch(events, selectables, handle, disconnect)

    reactor.doPoll = reactor.doIteration = do_poll  # type: ignore[method-assign]
    reactor._twinkly_direct = True  # type: ignore[attr-defined]
    return True


_PLAIN = (tcp.Server, tcp.Client)


def python_dispatch(
    events: list[tuple[int, int]],
    selectables: dict[int, object],
    handle: Callable[..., None],
    disconnect: Callable[..., None],
) -> None:
    """One poll's events (the reference of ``_dispatch.c``)."""
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            if event == EPOLLIN and type(selectable) in _PLAIN and selectable.connected:  # type: ignore[attr-defined]
                _read(selectable, disconnect)  # type: ignore[arg-type]
            else:
                handle(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            _log_error(selectable, e)


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
    protocol = connection.protocol
    if type(protocol) is _WrappingProtocol:
        protocol = protocol._wrappedProtocol
    try:
        protocol.dataReceived(data)
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        _log_error(connection, e)
        disconnect(connection, e, False)


def _log_error(selectable: object, error: BaseException) -> None:
    """Log an exception from an event's handling, as Twisted's dispatch does."""
    try:
        system = selectable.logPrefix()  # type: ignore[attr-defined]
    except Exception:
        system = "(buggy logPrefix method)"
    legacy_log.err(Failure(error), system=system)


PYTHON_DISPATCH, PYTHON_WRITER = python_dispatch, python_writer
C_DISPATCH: Callable[..., None] | None = None
C_WRITER: Callable[..., Callable[[bytes], None]] | None = None
try:
    from twinkly.proxy import _dispatch  # type: ignore[attr-defined]
except ImportError:  # built without a compiler
    pass
else:
    _dispatch.setup(
        _PLAIN, _WrappingProtocol, _log_error, main.CONNECTION_LOST, main.CONNECTION_DONE
    )
    C_DISPATCH, C_WRITER = _dispatch.dispatch, _dispatch.Writer

# The C ones run with the other C accelerators (TWINKLY_PURE_PYTHON=1: the references).
_C = C_DISPATCH is not None and accel.IMPLEMENTATION == "c"
DISPATCH: Callable[..., None] = C_DISPATCH if _C else PYTHON_DISPATCH  # type: ignore[assignment]
WRITER: Callable[..., Callable[[bytes], None]] = C_WRITER if _C else PYTHON_WRITER  # type: ignore[assignment]

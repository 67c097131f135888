"""Writing to a TCP transport without waiting for the next reactor turn.

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

from twisted.internet import tcp


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
    """Make an epoll reactor call each ready connection's ``doRead``/``doWrite`` without
    wrapping every call in ``twisted.python.log.callWithLogger``.

    That wrapper pushes a log context (a dict copy, a logPrefix call, two context-stack
    operations) around every readiness event: about 2 microseconds each in a tight loop,
    several in the proxy, three or more events per statement. Twinkly logs with
    ``twisted.logger``, which never reads that context. An exception escaping a handler
    is logged with ``log.err`` as before (the connection's logPrefix as its system).
    Returns whether the reactor was changed (only Twisted's EPollReactor is).
    """
    from twisted.internet.epollreactor import EPollReactor
    from twisted.python import log as legacy_log

    if not isinstance(reactor, EPollReactor) or getattr(reactor, "_twinkly_direct", False):
        return False
    poll = reactor._poller.poll
    selectables = reactor._selectables
    handle = reactor._doReadOrWrite

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
                handle(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                try:
                    system = selectable.logPrefix()
                except Exception:
                    system = "(buggy logPrefix method)"
                legacy_log.err(system=system)

    reactor.doPoll = reactor.doIteration = do_poll  # type: ignore[method-assign]
    reactor._twinkly_direct = True  # type: ignore[attr-defined]
    return True

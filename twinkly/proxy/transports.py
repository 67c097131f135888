"""The transport of a connected protocol, as the proxy uses it.

Twisted types ``Protocol.transport`` as ``ITransport | None``: None until
``makeConnection``, and only the few methods every transport has. The proxy's
connections run on TCP (``twisted.internet.tcp.Connection``), which also starts TLS and
takes part in producer/consumer flow control; ``stream_of`` gives the transport of a
connected protocol as that.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IConsumer, IPushProducer, ITLSTransport
from twisted.internet.protocol import Protocol
from zope.interface import Attribute

__all__ = ["IStreamTransport", "stream_of"]


class IStreamTransport(ITLSTransport, IConsumer, IPushProducer):
    """A TCP connection that can start TLS, pause its reading and register a producer."""

    connected = Attribute("Whether the connection is still open (false once it is lost)")


def stream_of(protocol: Protocol) -> IStreamTransport:
    """``protocol``'s transport, once connected (its transport is never None again)."""
    transport = protocol.transport
    assert transport is not None, "the protocol is not connected"
    # Twisted declares Protocol.transport only as an ITransport.
    return cast(IStreamTransport, transport)

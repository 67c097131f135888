"""Fakes shared by the unit tests: a backend taken through start-up over a
StringTransport, a transport with TCP's extra methods, and frame decoders."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock, StringTransport

from twinkly.proxy.backend import BackendProtocol
from twinkly.wire import backend as b
from twinkly.wire import frontend as f
from twinkly.wire.framing import MessageFramer

CONFIG = """
proxy {
  listen-port = 0
  postgresql { label = truthdb, port = 5001, user = u, password = pw, database = d }
  yugabytedb { label = targetdb, port = 5002, user = u2, password = pw2, database = d2 }
  flow { max-target-ahead = 4, max-held-results = 50 }
}
comparison.max-target-lag = 4
"""


class TCPStringTransport(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled

    def abortConnection(self) -> None:
        self.loseConnection()


def frames(data: bytes) -> list[object]:
    return [b.decode_backend(t, p) for t, p in MessageFramer().feed(data)]


def client_frames(data: bytes) -> list[object]:
    return [f.decode_frontend(t, p) for t, p in MessageFramer().feed(data)]


def ready_backend(config, label_status: str = "I") -> BackendProtocol:
    """A BackendProtocol taken through a real start-up exchange over a StringTransport."""
    clock = MemoryReactorClock()
    protocol = BackendProtocol(config, {"user": config.user, "database": "d"}, clock, 1 << 20)
    transport = TCPStringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(f.encode(b.Authentication(b.AUTH_CLEARTEXT)))
    protocol.dataReceived(
        f.encode(b.Authentication(b.AUTH_OK))
        + f.encode(b.ParameterStatus("server_version", "15.0"))
        + f.encode(b.BackendKeyData(77, b"\x01\x02\x03\x04"))
        + f.encode(b.ReadyForQuery(label_status))
    )
    transport.clear()
    return protocol

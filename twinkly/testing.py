"""Fakes shared by the unit tests: a backend taken through start-up over a
StringTransport, a transport with TCP's extra methods, and frame decoders."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport

from twinkly.config.schema import loads
from twinkly.proxy.backend import BackendProtocol
from twinkly.proxy.factory import ProxyFactory
from twinkly.tracking.pairing import PairCounter
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


class ClientHarness:
    """A ProxyFactory whose backends are BackendProtocols on StringTransports."""

    def __init__(self, config_text: str = CONFIG, **factory_options: Any) -> None:
        self.config = loads(config_text)
        self.reactor = MemoryReactorClock()
        self.observer = PairCounter()
        self.factory = ProxyFactory(
            self.config, self.reactor, lambda: self.observer, **factory_options
        )
        self.opening: defer.Deferred = defer.Deferred()
        self.requested: list[dict[str, str]] = []

        def open_backends(parameters, opened):
            self.requested.append(parameters)
            return self.opening

        self.factory.open_backends = open_backends  # type: ignore[method-assign]
        self.client = self.factory.buildProtocol(None)
        self.transport = TCPStringTransport()
        self.client.makeConnection(self.transport)

    def startup(self, **params: str) -> None:
        self.client.dataReceived(f.StartupMessage({"user": "alice", **params}).encode())

    def connect_backends(self) -> tuple[BackendProtocol, BackendProtocol]:
        truth = ready_backend(self.config.truth)
        target = ready_backend(self.config.target)
        self.opening.callback((truth, target))
        return truth, target

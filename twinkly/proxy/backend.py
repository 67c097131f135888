"""One connection from Twinkly to a backend: TLS, start-up and login, then a byte stream.

Until the backend says ReadyForQuery the protocol runs its own start-up state machine;
after that every received chunk goes straight to ``on_data`` (the session), untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from twinkly.config.schema import BackendConfig
from twinkly.proxy.auth import AuthenticationFailed, BackendAuthenticator
from twinkly.proxy.recording import StartupRecording
from twinkly.proxy.transports import stream_of
from twinkly.wire.backend import (
    Authentication,
    BackendKeyData,
    DataRow,
    ErrorResponse,
    decode_backend,
)
from twinkly.wire.buffers import Reader, tagged
from twinkly.wire.framing import MessageFramer, ProtocolViolation
from twinkly.wire.frontend import (
    CancelRequest,
    Query,
    SSLRequest,
    StartupMessage,
    Terminate,
    encode,
)

log = Logger()


class BackendError(Exception):
    """A backend could not be reached or refused the login; the message names it."""

    def __init__(self, message: str, sqlstate: str = "08006", fields: dict | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.fields = fields or {}


def startup_parameters(config: BackendConfig, client: dict[str, str]) -> dict[str, str]:
    """What to send a backend: the client's parameters with this backend's user and
    database, minus protocol extensions Twinkly does not speak."""
    params = {k: v for k, v in client.items() if not k.startswith("_pq_.")}
    params["user"] = config.user or client["user"]
    params["database"] = config.database or client.get("database") or client["user"]
    return params


def _tls_options(config: BackendConfig) -> IOpenSSLClientConnectionCreator:
    from twisted.internet import ssl  # pyOpenSSL: loaded only where TLS is configured

    if config.tls == "verify-full":
        with open(config.ca_file or "", "rb") as f:
            return ssl.optionsForClientTLS(config.host, trustRoot=ssl.Certificate.loadPEM(f.read()))
    if config.tls == "verify-ca":
        with open(config.ca_file or "", "rb") as f:
            ca = ssl.Certificate.loadPEM(f.read())
        return ssl.CertificateOptions(verify=True, caCerts=[ca.original], requireCertificate=True)
    return ssl.CertificateOptions()


class BackendProtocol(Protocol):
    """A backend connection. ``ready`` fires with the protocol once logged in."""

    def __init__(
        self,
        config: BackendConfig,
        parameters: dict[str, str],
        clock: IReactorTime,
        max_message_bytes: int,
    ) -> None:
        self.config = config
        self.label = config.label
        self.parameters = parameters
        self.clock = clock
        self.framer = MessageFramer(max_message_bytes)
        self.ready: defer.Deferred[BackendProtocol] = defer.Deferred()
        self.key: BackendKeyData | None = None
        self.status = "I"
        self.startup_bytes: list[bytes] = []  # ParameterStatus and notices, for the client
        self.server_parameters: dict[str, str] = {}
        self.leftover: list[tuple[int, bytes]] = []
        self._on_data: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[BackendProtocol, Failure], None] | None = None
        self.draining = False  # terminated, open until the server has sent what it owes
        self.after_drain: Callable[[BackendProtocol], None] | None = None
        self._auth = BackendAuthenticator(parameters["user"], config.password, config.describe())
        self._awaiting_ssl = False
        self._timeout: IDelayedCall | None = None
        self._query: tuple[list, BackendError | None, defer.Deferred] | None = None
        self.recording = StartupRecording()  # for a protocol trace of the session

    # --- connection lifecycle ------------------------------------------------------

    def connectionMade(self) -> None:
        unix = self.config.socket_path is not None
        if not unix:
            stream_of(self).setTcpNoDelay(True)
        self._timeout = self.clock.callLater(self.config.connect_timeout, self._start_timed_out)
        if self.config.tls != "disable" and not unix:  # no TLS on a Unix socket, as libpq
            self._awaiting_ssl = True
            self._write(SSLRequest().encode())
        else:
            self._send_startup()

    def _send_startup(self) -> None:
        self._write(StartupMessage(self.parameters).encode())

    def _write(self, data: bytes) -> None:
        self.recording.add(">", data)
        stream_of(self).write(data)

    def _start_timed_out(self) -> None:
        self._timeout = None
        self._fail(BackendError(f"{self.config.describe()} did not finish start-up in time"))
        stream_of(self).abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timeout()
        if not self.ready.called:
            self._fail(
                BackendError(
                    f"{self.config.describe()} closed the connection during start-up:"
                    f" {reason.getErrorMessage()}"
                )
            )
        elif self._query is not None:
            self._query_done(
                BackendError(
                    f"{self.config.describe()} closed the connection: {reason.getErrorMessage()}"
                )
            )
        elif self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(self, reason)
        self.draining = False
        if self.after_drain is not None:
            after_drain, self.after_drain = self.after_drain, None
            after_drain(self)

    def terminate(self, send: bool = True, drain: float = 0.0) -> None:
        """Say goodbye politely (unless already said), then close.

        With ``drain``, the connection stays open for up to that many seconds so that
        responses still owed arrive (and get compared): the server answers everything
        sent before the Terminate, then closes the connection itself."""
        self.on_lost = None
        if self.transport is None:
            return
        transport = stream_of(self)
        if not transport.connected:
            return
        if send:
            transport.write(encode(Terminate()))
        if drain > 0:
            self.draining = True
            transport.resumeProducing()
            self._timeout = self.clock.callLater(drain, transport.abortConnection)
        else:
            transport.loseConnection()

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def _fail(self, error: Exception) -> None:
        self._cancel_timeout()
        if not self.ready.called:
            self.ready.errback(Failure(error))

    # --- data ----------------------------------------------------------------------

    @property
    def on_data(self) -> Callable[[bytes], None] | None:
        """Who receives every chunk once the session has taken over (None before)."""
        return self._on_data

    @on_data.setter
    def on_data(self, receiver: Callable[[bytes], None] | None) -> None:
        # The receiver also becomes this instance's dataReceived: the reactor's read
        # reaches the session in one call instead of two, on every backend read.
        self._on_data = receiver
        if receiver is None:
            self.__dict__.pop("dataReceived", None)
        else:
            self.dataReceived = receiver  # type: ignore[method-assign, assignment]

    def dataReceived(self, data: bytes) -> None:
        on_data = self._on_data
        if on_data is not None:
            on_data(data)
            return
        self.recording.add("<", data)
        if self._query is not None:
            self._query_data(data)
            return
        if self.ready.called:
            return  # failed during start-up; closing
        if self._awaiting_ssl:
            data = self._ssl_answer(data)
            if not data:
                return
        try:
            messages = self.framer.feed(data)
            for index, (type_byte, payload) in enumerate(messages):
                if self._startup_message(type_byte, payload):
                    self.leftover = messages[index + 1 :]
                    self._cancel_timeout()
                    self.ready.callback(self)
                    return
        except (ProtocolViolation, AuthenticationFailed, BackendError) as e:
            if not isinstance(e, BackendError):
                e = BackendError(str(e), getattr(e, "sqlstate", "08006"))
            self._fail(e)
            stream_of(self).loseConnection()

    # --- Twinkly's own queries, before the client's session begins -----------------------

    def run_query(self, sql: str) -> defer.Deferred[list[list[str | None]]]:
        """Run one simple query of Twinkly's own (to align session settings) before the
        session takes the connection over; fires with the rows as text."""
        return self.run_messages(encode(Query(sql)))

    @property
    def idle(self) -> bool:
        """No query of Twinkly's own is waiting for its answer."""
        return self._query is None

    def run_messages(self, data: bytes) -> defer.Deferred[list[list[str | None]]]:
        """Send encoded messages ending in a Query or a Sync (a side connection's
        EXPLAIN); fires with the rows as text once ReadyForQuery comes, or a BackendError
        with the first error."""
        assert self.on_data is None and self._query is None
        self._query = ([], None, defer.Deferred())
        self._write(data)
        for type_byte, payload in self.leftover:
            self._query_message(type_byte, payload)
        self.leftover = []
        return self._query[2]

    def _query_data(self, data: bytes) -> None:
        try:
            for type_byte, payload in self.framer.feed(data):
                self._query_message(type_byte, payload)
        except ProtocolViolation as e:
            self._query_done(BackendError(f"{self.config.describe()}: {e}"))
            stream_of(self).loseConnection()

    def _query_message(self, type_byte: int, payload: bytes) -> None:
        if self._query is None:
            self.leftover.append((type_byte, payload))
            return
        rows, error, _ = self._query
        if type_byte == ord("D"):
            rows.append(
                [None if v is None else v.decode() for v in DataRow.read(Reader(payload)).values]
            )
        elif type_byte == ord("E") and error is None:
            fields = ErrorResponse.read(Reader(payload))
            self._query = (
                rows,
                BackendError(
                    f"{self.config.describe()}: {fields.message}", fields.sqlstate, fields.fields
                ),
                self._query[2],
            )
        elif type_byte == ord("S"):
            message = decode_backend(type_byte, payload)
            self.server_parameters[message.name] = message.value  # type: ignore[attr-defined]
        elif type_byte == ord("Z"):
            self.status = chr(payload[0])
            self._query_done(error)

    def _query_done(self, error: BackendError | None) -> None:
        assert self._query is not None
        rows, _, done = self._query
        self._query = None
        if error is not None:
            done.errback(Failure(error))
        else:
            done.callback(rows)

    def _ssl_answer(self, data: bytes) -> bytes:
        self._awaiting_ssl = False
        answer, rest = data[:1], data[1:]
        if answer == b"S":
            stream_of(self).startTLS(_tls_options(self.config))
            self._send_startup()
        elif answer == b"N" and self.config.tls == "prefer":
            self._send_startup()
        else:
            self._fail(
                BackendError(
                    f"{self.config.describe()} does not accept TLS (tls = {self.config.tls})"
                )
            )
            stream_of(self).loseConnection()
        return rest

    def _startup_message(self, type_byte: int, payload: bytes) -> bool:
        """Handle one start-up message; True once the backend is ready."""
        if type_byte == ord("R"):
            reply = self._auth.respond(Authentication.read(Reader(payload)))
            if reply:
                self._write(reply)
        elif type_byte == ord("S"):
            message = decode_backend(type_byte, payload)
            self.server_parameters[message.name] = message.value  # type: ignore[attr-defined]
            self.startup_bytes.append(tagged(b"S", payload))
        elif type_byte == ord("K"):
            self.key = BackendKeyData.read(Reader(payload))
        elif type_byte == ord("N"):
            self.startup_bytes.append(tagged(b"N", payload))
        elif type_byte == ord("E"):
            error = ErrorResponse.read(Reader(payload))
            raise BackendError(
                f"{self.config.describe()}: {error.message}", error.sqlstate, error.fields
            )
        elif type_byte == ord("v"):
            pass  # NegotiateProtocolVersion: we asked for 3.0 and no extensions
        elif type_byte == ord("Z"):
            self.status = chr(payload[0])
            return True
        else:
            raise BackendError(f"{self.config.describe()} sent {chr(type_byte)!r} during start-up")
        return False


def connect_backend(
    reactor: object,
    config: BackendConfig,
    parameters: dict[str, str],
    max_message_bytes: int,
) -> defer.Deferred[BackendProtocol]:
    """Connect, negotiate TLS, log in; fires with the ready protocol or a BackendError."""
    protocol = BackendProtocol(config, parameters, reactor, max_message_bytes)  # type: ignore[arg-type]
    endpoint = endpoint_of(reactor, config)

    def connect_failed(failure: Failure) -> Failure:
        if failure.check(BackendError):
            return failure
        raise BackendError(f"cannot connect to {config.describe()}: {failure.getErrorMessage()}")

    connecting = _connect(endpoint, protocol)
    connecting.addCallback(lambda _: protocol.ready)
    connecting.addErrback(connect_failed)
    return connecting


class _OneProtocol(Factory):
    """Hands out one prepared protocol; quiet, since there is one per backend connection."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self._protocol


def endpoint_of(reactor: object, config: BackendConfig) -> IStreamClientEndpoint:
    """Where the backend listens: its Unix socket when ``host`` is a directory (cheaper
    than loopback TCP for a server on the same machine), else its TCP address."""
    path = config.socket_path
    if path is not None:
        return UNIXClientEndpoint(reactor, path, timeout=config.connect_timeout)
    return HostnameEndpoint(reactor, config.host, config.port, timeout=config.connect_timeout)


def _connect(endpoint: IStreamClientEndpoint, protocol: Protocol) -> defer.Deferred:
    return endpoint.connect(_OneProtocol(protocol))


class _CancelSender(Protocol):
    def __init__(self, request: bytes) -> None:
        self._request = request

    def connectionMade(self) -> None:
        transport = stream_of(self)
        transport.write(self._request)
        transport.loseConnection()


def send_cancel(reactor: object, config: BackendConfig, key: BackendKeyData) -> defer.Deferred:
    """Deliver a CancelRequest for ``key`` on a fresh connection, as libpq does."""
    endpoint = endpoint_of(reactor, config)
    request = CancelRequest(key.process_id, key.secret_key).encode()
    connecting = _connect(endpoint, _CancelSender(request))
    connecting.addErrback(
        lambda f: log.warn(
            "cannot send cancel to {backend}: {error}",
            backend=config.describe(),
            error=f.getErrorMessage(),
        )
    )
    return connecting


@dataclass(frozen=True)
class SideConnection:
    """How to reach one backend as the session did."""

    config: BackendConfig
    parameters: dict[str, str]

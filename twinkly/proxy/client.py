"""The client-facing connection: start-up, authentication, hand-over to a Session.

``ClientProtocol`` runs the start-up phase itself (SSL and GSS negotiation, cancel
requests, Twinkly's own authentication), asks its factory to connect both backends at
once, then hands the connection to a ``Session``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from twinkly.proxy.auth import AuthenticationFailed, ClientAuthenticator, authentication_ok
from twinkly.proxy.backend import BackendProtocol
from twinkly.proxy.limits import TOO_MANY, Admission
from twinkly.proxy.recording import StartupRecording
from twinkly.proxy.session import Session
from twinkly.proxy.session_settings import align_settings
from twinkly.proxy.transports import stream_of
from twinkly.wire.backend import ErrorResponse, NegotiateProtocolVersion
from twinkly.wire.framing import (
    MessageFramer,
    ProtocolViolation,
    StartupFramer,
    StartupLengthInvalid,
)
from twinkly.wire.frontend import (
    CancelRequest,
    GSSENCRequest,
    PasswordMessage,
    SSLRequest,
    StartupMessage,
    decode_startup,
    encode,
)

log = Logger()


def fatal(sqlstate: str, message: str, detail: str | None = None) -> bytes:
    return encode(ErrorResponse.make("FATAL", sqlstate, message, detail))


class ClientProtocol(Protocol):
    """One client connection, from its first byte to its hand-over to a Session."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.session: Session | None = None
        self.startup: StartupMessage | None = None
        self._startup_framer = StartupFramer()
        self._framer = MessageFramer(factory.config.proxy.max_message_bytes)
        self._state = "startup"
        self._tls_started = False
        self._authenticator: ClientAuthenticator | None = None
        self._early: list[bytes] = []
        self._backends: list[BackendProtocol] = []
        # The start-up, both ways, for a protocol trace (only when tracing is on).
        tracer = factory.tracer
        self.recording = StartupRecording() if tracer is not None and tracer.recording() else None
        self._admission: Admission | None = None  # proxy.max-*-connections, login timer

    def connectionMade(self) -> None:
        stream_of(self).setTcpNoDelay(True)
        limits = self.factory.limits
        if limits is not None:
            admission = limits.admit(self._login_timed_out)
            if isinstance(admission, str):  # over a limit: refused as PostgreSQL does
                self._state = "closed"
                stream_of(self).write(fatal(TOO_MANY, admission))
                stream_of(self).loseConnection()
                return
            self._admission = admission
        self.factory.clients.add(self)

    def _login_timed_out(self) -> None:
        if self._state in ("startup", "auth"):
            self.fail("57014", "canceling authentication due to timeout")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._state = "closed"
        self.factory.clients.discard(self)
        if self._admission is not None:
            self._admission.gone()
        if self.session is not None:
            self.session.close()
        for backend in self._backends:
            backend.terminate()

    def _reply(self, data: bytes) -> None:
        """Write during start-up (recorded for a trace)."""
        if self.recording is not None:
            self.recording.add("<", data)
        stream_of(self).write(data)

    def dataReceived(self, data: bytes) -> None:
        if self.recording is not None and self._state in ("startup", "auth"):
            self.recording.add(">", data)  # later bytes reach the trace through the session
        self._received(data)

    def _received(self, data: bytes) -> None:
        session = self.session
        try:
            if session is not None:
                session.client_data(data)
            elif self._state == "startup":
                self._startup_data(data)
            elif self._state == "auth":
                self._auth_data(data)
            elif self._state == "connecting":
                self._early.append(data)
            elif self._state == "admin":
                self._admin_data(data)
        except StartupLengthInvalid as e:
            log.info("closing client connection without a reply: {message}", message=str(e))
            self._state = "closed"  # as PostgreSQL does (its COMMERROR is logged only)
            stream_of(self).loseConnection()
        except ProtocolViolation as e:
            self.fail("08P01", str(e))
        except AuthenticationFailed as e:
            self.fail(e.sqlstate, str(e))

    def fail(self, sqlstate: str, message: str) -> None:
        """Send a FATAL error and close, as PostgreSQL does."""
        log.info(
            "closing client connection: {sqlstate} {message}", sqlstate=sqlstate, message=message
        )
        if self._state != "closed":
            self._reply(fatal(sqlstate, message))
        self._state = "closed"
        if self.session is not None:
            self.session.close()
        stream_of(self).loseConnection()

    # --- start-up -------------------------------------------------------------------

    def _startup_data(self, data: bytes) -> None:
        body, rest = self._startup_framer.feed(data)
        if body is None:
            return
        packet = decode_startup(body)
        if isinstance(packet, SSLRequest):
            if self._tls_started or rest:
                raise ProtocolViolation("unexpected SSLRequest")
            options = self.factory.tls_options
            if options is None:
                self._reply(b"N")
            else:
                self._reply(b"S")
                stream_of(self).startTLS(options)
                self._tls_started = True
        elif isinstance(packet, GSSENCRequest):
            self._reply(b"N")
        elif isinstance(packet, CancelRequest):
            self.factory.cancel(packet.process_id, packet.secret_key)
            self._state = "closed"
            stream_of(self).loseConnection()
            return
        else:
            self._begin_auth(packet)
        if rest:
            self._received(rest)

    def _begin_auth(self, startup: StartupMessage) -> None:
        self.startup = startup
        unsupported = tuple(k for k in startup.parameters if k.startswith("_pq_."))
        if startup.minor > 0 or unsupported:
            self._reply(encode(NegotiateProtocolVersion(0, unsupported)))
        user = startup.parameters["user"]
        self._authenticator = ClientAuthenticator(self.factory.config.proxy.auth, user)
        self._state = "auth"
        reply, done = self._authenticator.start()
        if reply:
            self._reply(reply)
        if done:
            self._authenticated()

    def _auth_data(self, data: bytes) -> None:
        assert self._authenticator is not None
        for type_byte, payload in self._framer.feed(data):
            if self._state != "auth":
                raise ProtocolViolation("unexpected message during authentication")
            if type_byte != ord("p"):
                raise ProtocolViolation(
                    f"expected password response, got message type {chr(type_byte)!r}"
                )
            reply, done = self._authenticator.receive(PasswordMessage(payload))
            if reply:
                self._reply(reply)
            if done:
                self._authenticated()

    def _authenticated(self) -> None:
        assert self.startup is not None
        if self._admission is not None:
            self._admission.logged_in()
        admin = self.factory.config.proxy.admin
        if self.startup.parameters.get("database") == admin.database:
            self._start_admin()
            return
        self._state = "connecting"
        self._reply(authentication_ok())
        stream_of(self).pauseProducing()
        opening = self.factory.open_backends(self.startup.parameters, self._backends)
        opening.addCallbacks(self._backends_ready, self._backends_failed)
        opening.addErrback(self._unexpected)

    def _start_admin(self) -> None:
        """The virtual database: Twinkly's own console, for its admin users only."""
        assert self.startup is not None
        user = self.startup.parameters["user"]
        consoles = self.factory.admin
        if consoles is None or not consoles.allowed(user):
            self.fail("28000", f'Twinkly: user "{user}" may not use the admin console')
            return
        self._admin = consoles.open()
        self._state = "admin"
        self.recording = None  # not a session: nothing to trace
        self._reply(authentication_ok() + consoles.greeting())

    def _admin_data(self, data: bytes) -> None:
        for type_byte, payload in self._framer.feed(data):
            reply, close = self._admin.handle(type_byte, payload)
            if reply:
                stream_of(self).write(reply)
            if close:
                self._state = "closed"
                stream_of(self).loseConnection()
                return

    def _backends_ready(self, pair: tuple[BackendProtocol, BackendProtocol | None]) -> object:
        truth, target = pair
        if self._state != "connecting":
            truth.terminate()
            if target is not None:
                target.terminate()
            return None
        if self.factory.comparison is None or target is None:
            self._start_session(truth, target)
            return None
        # Comparing: the target prints values the way the truth does.
        assert self.startup is not None
        aligning = align_settings(truth, target, self.startup.parameters)
        aligning.addCallback(lambda _: self._start_session(truth, target))
        aligning.addErrback(self._backends_failed)
        return aligning

    def _start_session(self, truth: BackendProtocol, target: BackendProtocol | None) -> None:
        if self._state != "connecting":
            truth.terminate()
            if target is not None:
                target.terminate()
            return
        self._backends = []
        assert self.startup is not None
        session, key = self.factory.new_session(
            stream_of(self), truth, target, self.startup.parameters
        )
        self.session = session
        # Past start-up nothing is recorded here (see dataReceived): the reactor's read
        # goes to _received directly, one call fewer on every client read.
        self.dataReceived = self._received  # type: ignore[method-assign]
        self._reply(
            b"".join(truth.startup_bytes)
            + encode(key)
            + b"Z\x00\x00\x00\x05"
            + truth.status.encode()
        )
        session.start()
        started = {"truth": truth.recording.take()}
        if target is not None:
            started["target"] = target.recording.take()
        tracer = self.factory.tracer
        if tracer is not None and self.recording is not None:
            started["client"] = self.recording.take()
            tracer.start(session, self.startup.parameters.get("application_name", ""), started)
        self._state = "session"
        stream_of(self).resumeProducing()
        early, self._early = b"".join(self._early), []
        if early:
            self._received(early)

    def _backends_failed(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, defer.FirstError):
            error = error.subFailure.value
        if self._state != "connecting":
            return
        sqlstate = getattr(error, "sqlstate", "08006")
        from_target = getattr(error, "from_target", False)  # the breaker announced it
        if sqlstate.startswith("08") and not from_target:  # unreachable, not a refusal
            self.factory.backend_unavailable(str(error))
        self.fail(sqlstate, f"Twinkly: {error}")

    def _unexpected(self, failure: Failure) -> None:
        log.failure("session start-up failed", failure)
        self.fail("XX000", "Twinkly: internal error while starting the session")

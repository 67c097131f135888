"""An opt-in manhole: a Python console inside the running proxy, over SSH.

Built from conch's manhole_ssh / manhole_tap parts, plus what a service needs around them: a
constant-time password checker, a persistent host key, and a stop that closes sessions.
"""

from __future__ import annotations

import hashlib
import os
import secrets

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application import service
from twisted.conch import interfaces as iconch
from twisted.conch.insults import insults
from twisted.conch.manhole_ssh import ConchFactory, TerminalRealm, TerminalSession
from twisted.conch.manhole_tap import chainedProtocolFactory
from twisted.conch.ssh import keys
from twisted.conch.ssh.transport import SSHServerTransport
from twisted.cred import checkers, credentials, error, portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

_log = Logger()


@implementer(checkers.ICredentialsChecker)
class PasswordChecker:
    """Checks SSH passwords against a fixed user -> password map. The comparison runs on
    SHA-256 digests with compare_digest, so its time reveals neither the password, its
    length, nor whether the user exists."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, users: dict[str, str]) -> None:
        self._users = {u.encode(): hashlib.sha256(p.encode()).digest() for u, p in users.items()}
        self._nobody = hashlib.sha256(secrets.token_bytes(32)).digest()

    def requestAvatarId(
        self, creds: credentials.IUsernamePassword
    ) -> defer.Deferred[bytes | tuple[()]]:
        expected = self._users.get(creds.username, self._nobody)
        given = hashlib.sha256(creds.password).digest()
        if secrets.compare_digest(given, expected) and creds.username in self._users:
            return defer.succeed(creds.username)
        return defer.fail(error.UnauthorizedLogin())


class _TerminalSession(TerminalSession):
    """conch's session, plus the two requests it leaves unimplemented (each would log an
    error): a resized client window and an EOF from the client."""

    _terminal: insults.ServerProtocol | None = None

    def openShell(self, proto: object) -> None:
        self._terminal = self.chainedProtocolFactory()
        user = iconch.IConchUser(self.original)
        self.transportFactory(proto, self._terminal, user, self.width, self.height)

    def windowChanged(self, newWindowSize: tuple[int, ...]) -> None:
        if self._terminal is not None:
            # insults declares terminalProtocol = None unannotated (so: type None); once the
            # shell is open it is the manhole's ITerminalProtocol.
            terminal = self._terminal.terminalProtocol
            terminal.terminalSize(newWindowSize[1], newWindowSize[0])  # type: ignore[attr-defined]

    def eofReceived(self) -> None:
        if self._terminal is not None:
            self._terminal.loseConnection()


class _Transport(SSHServerTransport):
    """Registers itself with its factory while connected, so a stop can close it."""

    def _live(self) -> dict[_Transport, defer.Deferred[None]]:
        factory = self.factory
        assert isinstance(factory, _Factory)  # the only factory that builds these
        return factory.live

    def connectionMade(self) -> None:
        self._live()[self] = defer.Deferred()
        super().connectionMade()

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self._live().pop(self).callback(None)


class _Factory(ConchFactory):
    """conch's factory, with the transports now connected (each with a Deferred that
    fires once it is gone)."""

    protocol = _Transport

    def __init__(self, portal_: portal.Portal) -> None:
        super().__init__(portal_)
        self.live: dict[_Transport, defer.Deferred[None]] = {}


@implementer(portal.IRealm)  # as conch's TerminalRealm is, without declaring it
class _TerminalRealm(TerminalRealm):
    sessionFactory = _TerminalSession


def load_host_key(path: str | None) -> keys.Key:
    """The host key at ``path``; a new Ed25519 key (saved there, mode 0600, when ``path`` is
    given) when there is none, so that clients see the same key across restarts."""
    if path is not None and os.path.exists(path):
        return keys.Key.fromFile(path)
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    return keys.Key.fromString(pem)


class ManholeService(service.Service):
    """Listens for SSH on start; ``port`` is the IListeningPort while running."""

    def __init__(
        self,
        port: int,
        portal_: portal.Portal,
        host_key_path: str | None,
        interface: str,
        reactor: IReactorTCP,
    ) -> None:
        self._reactor = reactor
        self._portnum, self._portal = port, portal_
        self._host_key_path, self._interface = host_key_path, interface
        self.port: IListeningPort | None = None
        self.host_key: keys.Key | None = None
        self._factory: _Factory | None = None

    def bound_port(self) -> int:
        """The TCP port actually listened on (useful when started with port 0)."""
        assert self.port is not None, "the manhole is not running"
        address = self.port.getHost()
        assert isinstance(address, IPv4Address | IPv6Address)  # a TCP port
        return address.port

    def startService(self) -> None:
        key = self.host_key = load_host_key(self._host_key_path)
        factory = self._factory = _Factory(self._portal)
        # Per-instance dicts: ConchFactory's class attributes are shared by all factories.
        # ConchFactory annotates them dict[bytes, bytes]; SSHFactory reads Key objects there.
        factory.publicKeys = {key.sshType(): key.public()}  # type: ignore[dict-item]
        factory.privateKeys = {key.sshType(): key}  # type: ignore[dict-item]
        # IReactorTCP.listenTCP annotates a ServerFactory; any IProtocolFactory will do.
        self.port = self._reactor.listenTCP(
            self._portnum,
            factory,  # type: ignore[arg-type]
            interface=self._interface,
        )
        super().startService()
        fingerprint = key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")
        where, kind = f"{self._interface}:{self.bound_port()}", key.sshType().decode()
        _log.info(
            "Manhole: SSH on {where}, host key {kind} SHA256:{fp}",
            where=where,
            kind=kind,
            fp=fingerprint,
        )

    def stopService(self) -> defer.Deferred[list[None]]:
        """Stops listening and closes open sessions; fires once all are gone."""
        super().stopService()
        port, factory, self.port, self._factory = self.port, self._factory, None, None
        waits: list[defer.Deferred[None]] = []
        if port is not None:
            # stopListening returns a Deferred or None; maybeDeferred's result fires with
            # None either way (typed from the union, so said again here).
            waits.append(defer.maybeDeferred(port.stopListening).addCallback(lambda _: None))
        for transport, closed in list(factory.live.items()) if factory is not None else []:
            waits.append(closed)
            connection = transport.transport
            assert connection is not None  # live: connected
            connection.loseConnection()
        return defer.gatherResults(waits)


def manhole_service(
    port: int,
    users: dict[str, str],
    namespace: dict,
    host_key_path: str | None,
    interface: str = "127.0.0.1",
    *,
    reactor: IReactorTCP,
) -> service.IService:
    """An SSH manhole on ``interface:port``: password login against ``users``, then a
    ColoredManhole whose globals are (a per-session copy of) ``namespace``."""
    if not users:
        raise ValueError("manhole: no users configured; at least one user/password is needed")
    if not all(users.values()):
        raise ValueError("manhole: every user needs a non-empty password")
    realm = _TerminalRealm()
    # conch infers type[ServerProtocol] from the default; any factory of one will do.
    realm.chainedProtocolFactory = chainedProtocolFactory(namespace)  # type: ignore[assignment]
    return ManholeService(
        port, portal.Portal(realm, [PasswordChecker(users)]), host_key_path, interface, reactor
    )

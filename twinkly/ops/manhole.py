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
from twisted.conch.manhole_ssh import ConchFactory, TerminalRealm, TerminalSession
from twisted.conch.manhole_tap import chainedProtocolFactory
from twisted.conch.ssh import keys
from twisted.conch.ssh.transport import SSHServerTransport
from twisted.cred import checkers, credentials, error, portal
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.logger import Logger
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

    def requestAvatarId(self, creds: credentials.IUsernamePassword) -> defer.Deferred[bytes]:
        expected = self._users.get(creds.username, self._nobody)
        given = hashlib.sha256(creds.password).digest()
        if secrets.compare_digest(given, expected) and creds.username in self._users:
            return defer.succeed(creds.username)
        return defer.fail(error.UnauthorizedLogin())


class _TerminalSession(TerminalSession):
    """conch's session, plus the two requests it leaves unimplemented (each would log an
    error): a resized client window and an EOF from the client."""

    _terminal = None

    def openShell(self, proto: object) -> None:
        self._terminal = self.chainedProtocolFactory()
        user = iconch.IConchUser(self.original)
        self.transportFactory(proto, self._terminal, user, self.width, self.height)

    def windowChanged(self, newWindowSize: tuple[int, ...]) -> None:
        if self._terminal is not None:
            self._terminal.terminalProtocol.terminalSize(newWindowSize[1], newWindowSize[0])

    def eofReceived(self) -> None:
        if self._terminal is not None:
            self._terminal.loseConnection()


class _Transport(SSHServerTransport):
    """Registers itself with its factory while connected, so a stop can close it."""

    def connectionMade(self) -> None:
        self.factory.live[self] = defer.Deferred()
        super().connectionMade()

    def connectionLost(self, reason: object) -> None:
        super().connectionLost(reason)
        self.factory.live.pop(self).callback(None)


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
        self._factory: ConchFactory | None = None

    def bound_port(self) -> int:
        """The TCP port actually listened on (useful when started with port 0)."""
        assert self.port is not None, "the manhole is not running"
        return self.port.getHost().port

    def startService(self) -> None:
        key = self.host_key = load_host_key(self._host_key_path)
        factory = self._factory = ConchFactory(self._portal)
        factory.protocol = _Transport
        factory.live = {}
        # Per-instance dicts: ConchFactory's class attributes are shared by all factories.
        factory.publicKeys = {key.sshType(): key.public()}
        factory.privateKeys = {key.sshType(): key}
        self.port = self._reactor.listenTCP(self._portnum, factory, interface=self._interface)
        super().startService()
        fingerprint = key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")
        where, kind = f"{self._interface}:{self.bound_port()}", key.sshType().decode()
        _log.info(
            "Manhole: SSH on {where}, host key {kind} SHA256:{fp}",
            where=where,
            kind=kind,
            fp=fingerprint,
        )

    def stopService(self) -> defer.Deferred[object]:
        """Stops listening and closes open sessions; fires once all are gone."""
        super().stopService()
        port, factory, self.port, self._factory = self.port, self._factory, None, None
        waits = [defer.maybeDeferred(port.stopListening)] if port is not None else []
        for transport, closed in list(factory.live.items()) if factory is not None else []:
            waits.append(closed)
            transport.transport.loseConnection()
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
    realm = TerminalRealm()
    realm.sessionFactory = _TerminalSession
    realm.chainedProtocolFactory = chainedProtocolFactory(namespace)
    return ManholeService(
        port, portal.Portal(realm, [PasswordChecker(users)]), host_key_path, interface, reactor
    )

"""Authentication, both ways, as plain state machines.

Twinkly authenticates each client itself (against configured users) and then logs in
to each backend with that backend's own credentials. SCRAM-SHA-256 is scramp's; MD5 is
PostgreSQL's one-line formula, which no library packages.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import TYPE_CHECKING

from scramp import ScramClient, ScramException, ScramMechanism

from twinkly.config.schema import ClientAuthConfig
from twinkly.wire.backend import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    Authentication,
)
from twinkly.wire.frontend import PasswordMessage, encode

if TYPE_CHECKING:
    from scramp.core import ScramServer

SCRAM = "SCRAM-SHA-256"


class AuthenticationFailed(Exception):
    """Login refused; carries the SQLSTATE to report."""

    def __init__(self, message: str, sqlstate: str = "28P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def md5_password(user: str, password: str, salt: bytes) -> str:
    """PostgreSQL's MD5 response: 'md5' + md5(md5(password + user) + salt)."""
    inner = password if _is_md5_hash(password) else _md5_of(user, password)
    return "md5" + hashlib.md5(inner[3:].encode() + salt).hexdigest()


def _md5_of(user: str, password: str) -> str:
    return "md5" + hashlib.md5(password.encode() + user.encode()).hexdigest()


def _is_md5_hash(value: str) -> bool:
    return len(value) == 35 and value.startswith("md5")


# --- Twinkly as a client of a backend -----------------------------------------------


class BackendAuthenticator:
    """Answers a backend's Authentication requests with one backend's credentials."""

    def __init__(self, user: str, password: str | None, label: str) -> None:
        self._user = user
        self._password = password
        self._label = label
        self._scram: ScramClient | None = None

    def _need_password(self, method: str) -> str:
        if not self._password:
            raise AuthenticationFailed(
                f"{self._label} asks for {method} authentication"
                f" but no password is configured for user {self._user!r}",
                "28000",
            )
        return self._password

    def respond(self, request: Authentication) -> bytes:
        """Bytes to send in reply; b'' when the request needs no reply."""
        code = request.code
        if code == AUTH_OK:
            return b""
        if code == AUTH_CLEARTEXT:
            return encode(PasswordMessage.cleartext(self._need_password("password")))
        if code == AUTH_MD5:
            answer = md5_password(self._user, self._need_password("md5"), request.data[:4])
            return encode(PasswordMessage.cleartext(answer))
        if code == AUTH_SASL:
            if SCRAM not in request.sasl_mechanisms():
                raise AuthenticationFailed(
                    f"{self._label} offers SASL mechanisms {request.sasl_mechanisms()},"
                    f" none of which Twinkly supports"
                )
            password = self._need_password("SCRAM")
            try:
                self._scram = ScramClient([SCRAM], self._user, password)
                first = self._scram.get_client_first().encode()
            except ScramException as e:
                raise AuthenticationFailed(
                    f"cannot start SCRAM with {self._label} for user {self._user!r}: {e}",
                    "28000",
                ) from e
            return encode(PasswordMessage.sasl_initial(SCRAM, first))
        if code == AUTH_SASL_CONTINUE and self._scram is not None:
            try:
                self._scram.set_server_first(request.data.decode())
                return encode(PasswordMessage(self._scram.get_client_final().encode()))
            except ScramException as e:
                raise AuthenticationFailed(f"SCRAM with {self._label} failed: {e}") from e
        if code == AUTH_SASL_FINAL and self._scram is not None:
            try:
                self._scram.set_server_final(request.data.decode())
            except ScramException as e:
                raise AuthenticationFailed(
                    f"{self._label} failed to prove it knows the password: {e}"
                ) from e
            return b""
        raise AuthenticationFailed(
            f"{self._label} asks for an authentication method Twinkly does not support"
            f" (request code {code})",
            "28000",
        )


# --- Twinkly as the server a client logs in to ---------------------------------------


class ClientAuthenticator:
    """Authenticates one client. ``start`` gives the first request to send; each
    ``receive`` of a PasswordMessage gives ``(reply bytes, finished)``."""

    def __init__(self, config: ClientAuthConfig, user: str) -> None:
        self._config = config
        self._user = user
        self._password = config.password_of(user)
        self._salt = os.urandom(4)
        self._scram: ScramServer | None = None
        self._stage = 0

    def _refuse(self) -> AuthenticationFailed:
        method = self._config.method
        label = "password" if method == "scram-sha-256" else method
        return AuthenticationFailed(f'{label} authentication failed for user "{self._user}"')

    def start(self) -> tuple[bytes, bool]:
        method = self._config.method
        if method == "trust":
            if self._config.users and self._password is None:
                raise self._refuse()
            return b"", True
        if method == "password":
            return encode(Authentication(AUTH_CLEARTEXT)), False
        if method == "md5":
            return encode(Authentication(AUTH_MD5, self._salt)), False
        return encode(Authentication.sasl([SCRAM])), False

    def receive(self, message: PasswordMessage) -> tuple[bytes, bool]:
        method = self._config.method
        if self._password is None:
            raise self._refuse()
        if method == "password":
            given = message.parse_cleartext()
            if _is_md5_hash(self._password):
                ok = hmac.compare_digest(_md5_of(self._user, given), self._password)
            else:
                ok = hmac.compare_digest(given.encode(), self._password.encode())
            if not ok:
                raise self._refuse()
            return b"", True
        if method == "md5":
            expected = md5_password(self._user, self._password, self._salt)
            if not hmac.compare_digest(message.parse_cleartext().encode(), expected.encode()):
                raise self._refuse()
            return b"", True
        return self._scram_step(message)

    def _scram_step(self, message: PasswordMessage) -> tuple[bytes, bool]:
        try:
            if self._stage == 0:
                mechanism, data = message.parse_sasl_initial()
                if mechanism != SCRAM:
                    raise AuthenticationFailed(
                        f"client selected an invalid SASL authentication mechanism {mechanism}",
                        "08P01",
                    )
                info = ScramMechanism(SCRAM).make_auth_info(self._password, iteration_count=4096)
                scram = self._scram = ScramMechanism(SCRAM).make_server(lambda _user: info)
                _set_client_first(scram, data.decode())
                self._stage = 1
                reply = scram.get_server_first().encode()
                return encode(Authentication(AUTH_SASL_CONTINUE, reply)), False
            scram = self._scram
            assert scram is not None  # made at stage 0
            scram.set_client_final(message.data.decode())
            final = scram.get_server_final().encode()
            return encode(Authentication(AUTH_SASL_FINAL, final)), True
        except (ScramException, UnicodeDecodeError) as e:
            raise self._refuse() from e


def _set_client_first(server: ScramServer, client_first: str) -> None:
    """Feed a client-first message to scramp's server.

    PostgreSQL clients (libpq among them) send an empty user name ("n=,"), since the
    server takes the name from the start-up packet; scramp rejects an empty name. Give
    scramp a placeholder to parse, then restore the exact bare message the client will
    sign, so the proof is checked against what the client really sent.
    """
    header_end = client_first.find(",", client_first.find(",") + 1) + 1
    bare = client_first[header_end:]
    placeholder = "n=*" + bare[2:] if bare.startswith("n=,") else bare
    server.set_client_first(client_first[:header_end] + placeholder)
    server.client_first_bare = bare


def authentication_ok() -> bytes:
    return encode(Authentication(AUTH_OK))

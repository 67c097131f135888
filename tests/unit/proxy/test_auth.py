"""Authentication both ways: Twinkly as the server of a client, and as a backend's client."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac

from scramp import ScramClient, ScramException, ScramMechanism
from twisted.trial.unittest import SynchronousTestCase

from twinkly.proxy.auth import (
    AuthenticationFailed,
    BackendAuthenticator,
    ClientAuthConfig,
    ClientAuthenticator,
    md5_password,
)
from twinkly.wire import backend as b
from twinkly.wire.framing import MessageFramer
from twinkly.wire.frontend import PasswordMessage, decode_frontend

SCRAM = "SCRAM-SHA-256"
# PostgreSQL's MD5 answer for user "postgres", password "secret", salt 01 02 03 04:
# "md5" + md5(md5("secret" + "postgres").hexdigest() + salt).hexdigest()
KNOWN_MD5 = "md5bb41a296aab6baccb36ff243a562abff"


def one_message(data: bytes) -> tuple[int, bytes]:
    messages = MessageFramer().feed(data)
    if len(messages) != 1:
        raise AssertionError(f"expected one message, got {messages!r}")
    return messages[0]


def backend_message(data: bytes) -> object:
    return b.decode_backend(*one_message(data))


def password_message(data: bytes) -> PasswordMessage:
    message = decode_frontend(*one_message(data))
    assert isinstance(message, PasswordMessage)
    return message


def md5_by_hand(user: str, password: str, salt: bytes) -> str:
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


class ClientAuthTestCase(SynchronousTestCase):
    def authenticator(self, method: str, user: str = "alice", stored: str = "s3cret"):
        config = ClientAuthConfig(method, (("alice", stored), ("bob", "other")))
        return ClientAuthenticator(config, user)

    def assertRefused(self, call, *args) -> AuthenticationFailed:
        e = self.assertRaises(AuthenticationFailed, call, *args)
        self.assertEqual(e.sqlstate, "28P01")
        return e


class TrustAndPasswordTests(ClientAuthTestCase):
    def test_trust_without_users(self) -> None:
        authenticator = ClientAuthenticator(ClientAuthConfig("trust"), "anyone")
        self.assertEqual(authenticator.start(), (b"", True))

    def test_trust_with_users(self) -> None:
        self.assertEqual(self.authenticator("trust", "alice").start(), (b"", True))
        e = self.assertRefused(self.authenticator("trust", "mallory").start)
        self.assertIn("mallory", str(e))

    def test_password_right(self) -> None:
        authenticator = self.authenticator("password")
        request, finished = authenticator.start()
        self.assertFalse(finished)
        self.assertEqual(backend_message(request), b.Authentication(b.AUTH_CLEARTEXT))
        self.assertEqual(authenticator.receive(PasswordMessage.cleartext("s3cret")), (b"", True))

    def test_password_wrong(self) -> None:
        authenticator = self.authenticator("password")
        authenticator.start()
        for wrong in ("S3cret", "s3cret ", "", "other"):
            e = self.assertRefused(authenticator.receive, PasswordMessage.cleartext(wrong))
            self.assertEqual(str(e), 'password authentication failed for user "alice"')

    def test_password_unknown_user(self) -> None:
        authenticator = self.authenticator("password", "mallory")
        authenticator.start()  # asks anyway, so that user names cannot be probed
        self.assertRefused(authenticator.receive, PasswordMessage.cleartext("s3cret"))

    def test_password_against_stored_md5_hash(self) -> None:
        stored = "md5" + hashlib.md5(b"s3cretalice").hexdigest()
        authenticator = self.authenticator("password", stored=stored)
        authenticator.start()
        self.assertEqual(authenticator.receive(PasswordMessage.cleartext("s3cret")), (b"", True))
        authenticator = self.authenticator("password", stored=stored)
        self.assertRefused(authenticator.receive, PasswordMessage.cleartext(stored))
        self.assertRefused(authenticator.receive, PasswordMessage.cleartext("wrong"))


class Md5Tests(ClientAuthTestCase):
    def exchange(self, authenticator: ClientAuthenticator, password: str) -> tuple[bytes, bool]:
        request, finished = authenticator.start()
        self.assertFalse(finished)
        message = backend_message(request)
        self.assertEqual(message.code, b.AUTH_MD5)
        self.assertEqual(len(message.data), 4)
        answer = md5_password("alice", password, message.data)
        self.assertEqual(answer, md5_by_hand("alice", password, message.data))
        return authenticator.receive(PasswordMessage.cleartext(answer))

    def test_right(self) -> None:
        self.assertEqual(self.exchange(self.authenticator("md5"), "s3cret"), (b"", True))

    def test_wrong(self) -> None:
        e = self.assertRefused(self.exchange, self.authenticator("md5"), "s3cre")
        self.assertIn("md5 authentication failed", str(e))

    def test_stored_md5_hash(self) -> None:
        stored = "md5" + hashlib.md5(b"s3cretalice").hexdigest()
        self.assertEqual(
            self.exchange(self.authenticator("md5", stored=stored), "s3cret"), (b"", True)
        )

    def test_salts_differ(self) -> None:
        first = backend_message(self.authenticator("md5").start()[0])
        second = backend_message(self.authenticator("md5").start()[0])
        self.assertNotEqual(first.data, second.data)

    def test_answer_for_another_salt_is_refused(self) -> None:
        authenticator = self.authenticator("md5")
        salt = backend_message(authenticator.start()[0]).data
        other_salt = bytes((x + 1) % 256 for x in salt)
        answer = md5_password("alice", "s3cret", other_salt)
        self.assertRefused(authenticator.receive, PasswordMessage.cleartext(answer))


class ScramServerTests(ClientAuthTestCase):
    def test_scramp_client(self) -> None:
        authenticator = self.authenticator("scram-sha-256")
        request, finished = authenticator.start()
        self.assertFalse(finished)
        self.assertEqual(backend_message(request).sasl_mechanisms(), [SCRAM])
        client = ScramClient([SCRAM], "alice", "s3cret")
        first = PasswordMessage.sasl_initial(SCRAM, client.get_client_first().encode())
        reply, finished = authenticator.receive(first)
        self.assertFalse(finished)
        cont = backend_message(reply)
        self.assertEqual(cont.code, b.AUTH_SASL_CONTINUE)
        client.set_server_first(cont.data.decode())
        reply, finished = authenticator.receive(PasswordMessage(client.get_client_final().encode()))
        self.assertTrue(finished)
        final = backend_message(reply)
        self.assertEqual(final.code, b.AUTH_SASL_FINAL)
        client.set_server_final(final.data.decode())  # raises if the server's proof is wrong

    def test_scramp_client_wrong_password(self) -> None:
        authenticator = self.authenticator("scram-sha-256")
        authenticator.start()
        client = ScramClient([SCRAM], "alice", "wrong")
        first = PasswordMessage.sasl_initial(SCRAM, client.get_client_first().encode())
        client.set_server_first(backend_message(authenticator.receive(first)[0]).data.decode())
        e = self.assertRefused(
            authenticator.receive, PasswordMessage(client.get_client_final().encode())
        )
        self.assertEqual(str(e), 'password authentication failed for user "alice"')

    def libpq_exchange(self, password: str, gs2: str = "n,,") -> tuple[bytes, bytes]:
        """A libpq-style exchange built by hand per RFC 5802, with an empty user name.

        Returns the server's final message and the ServerSignature the client expects."""
        authenticator = self.authenticator("scram-sha-256")
        authenticator.start()
        nonce = "rOprNGfwEbeRWgbNEkqO"
        client_first_bare = f"n=,r={nonce}"
        initial = PasswordMessage.sasl_initial(SCRAM, f"{gs2}{client_first_bare}".encode())
        reply, finished = authenticator.receive(initial)
        self.assertFalse(finished)
        server_first = backend_message(reply).data.decode()
        attributes = dict(part.split("=", 1) for part in server_first.split(","))
        self.assertTrue(attributes["r"].startswith(nonce))
        self.assertGreater(len(attributes["r"]), len(nonce))
        salt, iterations = base64.b64decode(attributes["s"]), int(attributes["i"])

        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c={base64.b64encode(gs2.encode()).decode()},r={attributes['r']}"
        auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(x ^ y for x, y in zip(client_key, signature, strict=True))
        final = f"{without_proof},p={base64.b64encode(proof).decode()}"
        reply, finished = authenticator.receive(PasswordMessage(final.encode()))
        self.assertTrue(finished)
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        expected = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        message = backend_message(reply)
        self.assertEqual(message.code, b.AUTH_SASL_FINAL)
        return message.data, b"v=" + base64.b64encode(expected)

    def test_libpq_empty_user_name(self) -> None:
        server_final, expected = self.libpq_exchange("s3cret")
        self.assertEqual(server_final, expected)

    def test_libpq_over_tls_without_channel_binding(self) -> None:
        # libpq sends "y,," when it could bind to the channel but the server offered no PLUS
        server_final, expected = self.libpq_exchange("s3cret", gs2="y,,")
        self.assertEqual(server_final, expected)

    def test_libpq_wrong_password(self) -> None:
        e = self.assertRaises(AuthenticationFailed, self.libpq_exchange, "wrong")
        self.assertEqual(e.sqlstate, "28P01")

    def test_unknown_user(self) -> None:
        authenticator = self.authenticator("scram-sha-256", "mallory")
        authenticator.start()
        client = ScramClient([SCRAM], "mallory", "x")
        first = PasswordMessage.sasl_initial(SCRAM, client.get_client_first().encode())
        self.assertRefused(authenticator.receive, first)

    def test_other_mechanism(self) -> None:
        authenticator = self.authenticator("scram-sha-256")
        authenticator.start()
        message = PasswordMessage.sasl_initial("SCRAM-SHA-256-PLUS", b"p=tls-unique,,n=,r=x")
        e = self.assertRaises(AuthenticationFailed, authenticator.receive, message)
        self.assertEqual(e.sqlstate, "08P01")

    def test_malformed_client_first(self) -> None:
        authenticator = self.authenticator("scram-sha-256")
        authenticator.start()
        self.assertRefused(authenticator.receive, PasswordMessage.sasl_initial(SCRAM, b"garbage"))


class BackendAuthTests(SynchronousTestCase):
    def test_ok_needs_no_reply(self) -> None:
        self.assertEqual(BackendAuthenticator("u", None, "pg").respond(b.Authentication(0)), b"")

    def test_cleartext(self) -> None:
        reply = BackendAuthenticator("u", "pw", "pg").respond(b.Authentication(b.AUTH_CLEARTEXT))
        self.assertEqual(reply, b"p\x00\x00\x00\x07pw\x00")

    def test_md5(self) -> None:
        authenticator = BackendAuthenticator("postgres", "secret", "pg")
        reply = authenticator.respond(b.Authentication(b.AUTH_MD5, b"\x01\x02\x03\x04"))
        answer = password_message(reply).parse_cleartext()
        self.assertEqual(answer, KNOWN_MD5)
        self.assertEqual(answer, md5_by_hand("postgres", "secret", b"\x01\x02\x03\x04"))

    def test_md5_with_stored_hash(self) -> None:
        stored = "md5" + hashlib.md5(b"secretpostgres").hexdigest()
        reply = BackendAuthenticator("postgres", stored, "pg").respond(
            b.Authentication(b.AUTH_MD5, b"\x01\x02\x03\x04")
        )
        self.assertEqual(password_message(reply).parse_cleartext(), KNOWN_MD5)

    def scram_server(self, password: str):
        mechanism = ScramMechanism(SCRAM)
        info = mechanism.make_auth_info(password, iteration_count=4096)
        return mechanism.make_server(lambda user: info if user == "alice" else None)

    def test_sasl_with_scramp_server(self) -> None:
        server = self.scram_server("s3cret")
        authenticator = BackendAuthenticator("alice", "s3cret", "pg18")
        first = password_message(authenticator.respond(b.Authentication.sasl([SCRAM])))
        mechanism, data = first.parse_sasl_initial()
        self.assertEqual(mechanism, SCRAM)
        server.set_client_first(data.decode())
        server_first = b.Authentication(b.AUTH_SASL_CONTINUE, server.get_server_first().encode())
        final = password_message(authenticator.respond(server_first))
        server.set_client_final(final.data.decode())  # raises if the proof is wrong
        server_final = b.Authentication(b.AUTH_SASL_FINAL, server.get_server_final().encode())
        self.assertEqual(authenticator.respond(server_final), b"")
        self.assertEqual(authenticator.respond(b.Authentication(b.AUTH_OK)), b"")

    def start_sasl(self, server) -> BackendAuthenticator:
        """Run the exchange up to the client's final message; return the authenticator."""
        authenticator = BackendAuthenticator("alice", "s3cret", "pg18")
        first = password_message(authenticator.respond(b.Authentication.sasl([SCRAM])))
        server.set_client_first(first.parse_sasl_initial()[1].decode())
        server_first = server.get_server_first().encode()
        final = authenticator.respond(b.Authentication(b.AUTH_SASL_CONTINUE, server_first))
        self.final = password_message(final).data.decode()
        return authenticator

    def test_sasl_server_with_another_password(self) -> None:
        server = self.scram_server("other")
        authenticator = self.start_sasl(server)
        self.assertRaises(ScramException, server.set_client_final, self.final)
        server_final = server.get_server_final()
        self.assertTrue(server_final.startswith("e="))
        e = self.assertRaises(
            AuthenticationFailed,
            authenticator.respond,
            b.Authentication(b.AUTH_SASL_FINAL, server_final.encode()),
        )
        self.assertIn("pg18", str(e))

    def test_sasl_server_signature_forged(self) -> None:
        server = self.scram_server("s3cret")
        authenticator = self.start_sasl(server)
        server.set_client_final(self.final)
        good = server.get_server_final()
        forged = "v=" + base64.b64encode(b"\x00" * 32).decode()
        self.assertNotEqual(forged, good)
        e = self.assertRaises(
            AuthenticationFailed,
            authenticator.respond,
            b.Authentication(b.AUTH_SASL_FINAL, forged.encode()),
        )
        self.assertIn("failed to prove it knows the password", str(e))

    def test_sasl_bad_server_first(self) -> None:
        authenticator = BackendAuthenticator("alice", "s3cret", "pg18")
        authenticator.respond(b.Authentication.sasl([SCRAM]))
        bad = b.Authentication(b.AUTH_SASL_CONTINUE, b"r=not-my-nonce,s=QUJD,i=4096")
        self.assertRaises(AuthenticationFailed, authenticator.respond, bad)

    def test_missing_password(self) -> None:
        for request in (
            b.Authentication(b.AUTH_CLEARTEXT),
            b.Authentication(b.AUTH_MD5, b"salt"),
            b.Authentication.sasl([SCRAM]),
        ):
            for password in (None, ""):
                authenticator = BackendAuthenticator("bob", password, "pg15")
                e = self.assertRaises(AuthenticationFailed, authenticator.respond, request)
                self.assertEqual(e.sqlstate, "28000")
                self.assertIn("no password is configured for user 'bob'", str(e))

    def test_saslprep_refusals_are_authentication_failures(self) -> None:
        for user, password in (("bad\x07user", "s3cret"), ("alice", "pass\x07word")):
            authenticator = BackendAuthenticator(user, password, "pg18")
            with contextlib.suppress(AuthenticationFailed):
                authenticator.respond(b.Authentication.sasl([SCRAM]))

    def test_unsupported_sasl_mechanism(self) -> None:
        authenticator = BackendAuthenticator("alice", "pw", "pg15")
        e = self.assertRaises(
            AuthenticationFailed, authenticator.respond, b.Authentication.sasl(["OAUTHBEARER"])
        )
        self.assertIn("OAUTHBEARER", str(e))

    def test_unsupported_codes(self) -> None:
        authenticator = BackendAuthenticator("alice", "pw", "pg15")
        # Kerberos V5, GSS, SSPI, and SASL continue/final without a SASL start
        for code in (2, 7, 8, 9, b.AUTH_SASL_CONTINUE, b.AUTH_SASL_FINAL):
            e = self.assertRaises(
                AuthenticationFailed, authenticator.respond, b.Authentication(code, b"")
            )
            self.assertEqual(e.sqlstate, "28000")
            self.assertIn(f"request code {code}", str(e))

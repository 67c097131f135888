"""The SSH manhole: a real paramiko client logs in and evaluates an expression."""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import AsyncIterator

import paramiko
import pytest
import pytest_twisted
from twisted.conch.ssh import keys
from twisted.cred import checkers, credentials, error
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from twinkly.ops.manhole import ManholeService, PasswordChecker, load_host_key, manhole_service

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1b[=>78DEHMZc]")


@pytest_twisted.async_yield_fixture()
async def manhole() -> AsyncIterator[ManholeService]:
    svc = manhole_service(
        0, {"admin": "secret"}, {"answer": 6 * 7, "service": object()}, None, reactor=reactor
    )
    assert isinstance(svc, ManholeService)
    errors: list[dict] = []

    def watch(event: dict) -> None:
        if event.get("log_failure") is not None or event["log_level"] >= LogLevel.error:
            errors.append(event)

    globalLogPublisher.addObserver(watch)
    svc.startService()
    try:
        yield svc
    finally:
        await svc.stopService()
        globalLogPublisher.removeObserver(watch)
    assert not errors, [formatEvent(e) for e in errors]


def _client(svc: ManholeService, password: str) -> paramiko.SSHClient:
    """A paramiko client that trusts only the manhole's own host key."""
    assert svc.host_key is not None
    port = svc.bound_port()
    client = paramiko.SSHClient()
    host_key = paramiko.PKey.from_type_string(svc.host_key.sshType().decode(), svc.host_key.blob())
    client.get_host_keys().add(f"[127.0.0.1]:{port}", host_key.get_name(), host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            "127.0.0.1",
            port,
            username="admin",
            password=password,
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
    except BaseException:
        client.close()
        raise
    return client


def _evaluate(svc: ManholeService, line: str, expected: bytes) -> bytes:
    """Log in, type ``line`` in an interactive shell, read until a line reads ``expected``."""
    client = _client(svc, "secret")
    try:
        chan = client.invoke_shell(term="xterm", width=100, height=30)
        chan.settimeout(10)
        chan.resize_pty(width=120, height=40)  # a resize must not break the session
        chan.send(line.encode() + b"\r")
        output = b""
        deadline = time.monotonic() + 10
        while not re.search(rb"(?m)^" + expected + rb"\r?$", ANSI.sub(b"", output)):
            assert time.monotonic() < deadline, f"no {expected!r} in {output!r}"
            data = chan.recv(4096)
            assert data, f"channel closed; got {output!r}"
            output += data
        chan.send(b"\x04")  # Ctrl-D on an empty line ends the console, as in a terminal
        while chan.recv(4096):
            assert time.monotonic() < deadline, "the console did not end on Ctrl-D"
        return output
    finally:
        client.close()


@pytest_twisted.inlineCallbacks
def test_login_and_evaluate(manhole: ManholeService) -> None:
    output = yield deferToThread(_evaluate, manhole, "answer + 1", b"43")
    assert b"answer" in output  # the typed line is echoed


@pytest_twisted.inlineCallbacks
def test_wrong_password_is_refused(manhole: ManholeService) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        yield deferToThread(_client, manhole, "wrong")


@pytest_twisted.inlineCallbacks
def test_checker() -> None:
    checker = PasswordChecker({"admin": "secret", "ops": "other"})
    assert verifyObject(checkers.ICredentialsChecker, checker)
    avatar = yield checker.requestAvatarId(credentials.UsernamePassword(b"admin", b"secret"))
    assert avatar == b"admin"
    for user, password in [(b"admin", b"other"), (b"admin", b""), (b"nobody", b"secret")]:
        with pytest.raises(error.UnauthorizedLogin):
            yield checker.requestAvatarId(credentials.UsernamePassword(user, password))


def test_users_are_required() -> None:
    with pytest.raises(ValueError, match="no users"):
        manhole_service(0, {}, {}, None, reactor=reactor)
    with pytest.raises(ValueError, match="non-empty password"):
        manhole_service(0, {"admin": ""}, {}, None, reactor=reactor)


def test_host_key_is_generated_once_and_kept_private(tmp_path: os.PathLike) -> None:
    path = os.path.join(tmp_path, "keys", "manhole_host_key")
    first = load_host_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = load_host_key(path)
    assert again.fingerprint() == first.fingerprint()
    assert again.isPublic() is False
    assert load_host_key(None).fingerprint() != first.fingerprint()
    assert isinstance(first, keys.Key)

"""The LLM insight provider against a real local HTTP server (pytest-twisted, shared reactor).

Each test starts its own server on 127.0.0.1 and leaves no listening port, connection or
delayed call behind: pytest-twisted runs every test in the same reactor.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool

from twinkly.perf.insight import LLMInsightProvider

ANSWER = "  The target uses a Seq Scan: run ANALYZE on orders.  \n"
SECRET = "O''Brien-secret"


def plan(amount: str) -> list:
    return [
        {
            "Plan": {
                "Node Type": "Seq Scan",
                "Relation Name": "orders",
                "Filter": f"((name = '{SECRET}'::text) AND (amount > {amount}))",
            },
            "Execution Time": 3.5,
        }
    ]


REQUEST = {
    "statement": "SELECT * FROM orders WHERE name = $1 AND amount > $2",
    "fingerprint": "fp",
    "truth": {"label": "pg15", "elapsed_ms": 1.0, "plan": plan("31337"), "plan_error": None},
    "target": {"label": "pg18", "elapsed_ms": 90.0, "plan": plan("31337"), "plan_error": None},
    "heuristics": [],
}


class FakeLLM(resource.Resource):
    """Records each POST and answers the way the test asked for."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.pending: list[server.Request] = []
        self.finished: list[Any] = []  # what notifyFinish of a pending request fired with

    def render_POST(self, request: server.Request) -> Any:
        self.requests.append(
            {
                "path": request.path,
                "body": request.content.read(),
                "authorization": request.getHeader(b"authorization"),
                "content-type": request.getHeader(b"content-type"),
            }
        )
        if self.mode in ("hang", "hang-in-body"):
            self.pending.append(request)
            request.notifyFinish().addBoth(self.finished.append)
            if self.mode == "hang-in-body":  # headers and half an answer, then nothing
                request.setHeader(b"content-type", b"application/json")
                request.write(b'{"choices": [{"message": {"content": "Half')
            return server.NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json")
        if self.mode == "500":
            request.setResponseCode(500)
            return b'{"error": "the model is on fire"}'
        if self.mode == "not-json":
            return b"<html>Bad Gateway</html>"
        if self.mode == "no-choices":
            return b'{"object": "chat.completion", "choices": []}'
        if self.mode == "empty":
            return json.dumps({"choices": [{"message": {"content": "  "}}]}).encode()
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "tiny",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}}],
        }
        return json.dumps(body).encode()


class TrackingSite(server.Site):
    """A Site that knows its open connections, so teardown can wait for them to close."""

    def __init__(self, root: resource.Resource) -> None:
        super().__init__(root)
        self.open: dict[Any, Any] = {}  # channel -> its transport

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        made, lost = channel.makeConnection, channel.connectionLost

        def make_connection(transport: Any) -> None:
            self.open[channel] = transport
            made(transport)

        def connection_lost(reason: Any) -> None:
            self.open.pop(channel, None)
            lost(reason)

        channel.makeConnection = make_connection
        channel.connectionLost = connection_lost
        return channel


class World:
    def __init__(self) -> None:
        self.llm = FakeLLM()
        self.site = TrackingSite(self.llm)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/v1/chat/completions"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)
        self.logs: list[str] = []

    def provider(self, url: str | None = None, **kwargs: Any) -> LLMInsightProvider:
        options: dict[str, Any] = {
            "api_key": "test-key",
            "timeout": 5.0,
            "max_per_minute": 10,
            "redact": True,
        }
        options.update(kwargs)
        return LLMInsightProvider(self.agent, url or self.url, "tiny", clock=reactor, **options)

    def observe(self, event: dict) -> None:
        if event.get("log_namespace") == "twinkly.perf.insight":
            self.logs.append(formatEvent(event))


async def _settle(world: World, before: set) -> None:
    """Wait (up to 2 s) until the server's connections are closed, then clean up."""
    for _ in range(200):
        if not world.site.open:
            break
        await deferLater(reactor, 0.01, lambda: None)
    leftover = list(world.site.open.values())
    try:
        for transport in leftover:
            transport.abortConnection()
    finally:
        await world.port.stopListening()
        await world.pool.closeCachedConnections()
        await deferLater(reactor, 0.01, lambda: None)  # let aborted connections go
    assert not leftover, "the server still had open connections at the end of the test"
    new_calls = [c for c in reactor.getDelayedCalls() if c.active() and c not in before]
    assert not new_calls, f"delayed calls left behind: {new_calls}"


@pytest.fixture
def world() -> Iterator[World]:
    before = set(reactor.getDelayedCalls())
    w = World()
    globalLogPublisher.addObserver(w.observe)
    try:
        yield w
    finally:
        globalLogPublisher.removeObserver(w.observe)
        pytest_twisted.blockon(Deferred.fromCoroutine(_settle(w, before)))


@pytest_twisted.ensureDeferred
async def test_answer_with_model_key_and_no_literal(world: World) -> None:
    provider = world.provider()
    result = await provider.insight(REQUEST)
    assert result == {
        "provider": "llm",
        "model": "tiny",
        "text": "The target uses a Seq Scan: run ANALYZE on orders.",
    }
    assert (provider.sent, provider.answered, provider.failed, provider.skipped) == (1, 1, 0, 0)
    [got] = world.llm.requests
    assert got["path"] == b"/v1/chat/completions"
    assert got["authorization"] == b"Bearer test-key"
    assert got["content-type"] == b"application/json"
    body = json.loads(got["body"])
    assert body["model"] == "tiny"
    assert body["temperature"] == 0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    user = body["messages"][1]["content"]
    assert "pg15" in user and "pg18" in user and "Seq Scan" in user
    assert "Brien" not in got["body"].decode() and "31337" not in got["body"].decode()
    assert world.logs == []


@pytest_twisted.ensureDeferred
async def test_literals_sent_when_redaction_is_off(world: World) -> None:
    provider = world.provider(redact=False, api_key=None)
    result = await provider.insight(REQUEST)
    assert result is not None
    [got] = world.llm.requests
    assert got["authorization"] is None
    assert "Brien" in got["body"].decode() and "31337" in got["body"].decode()


@pytest.mark.parametrize("mode", ["hang", "hang-in-body"])
@pytest_twisted.ensureDeferred
async def test_timeout_fires_none(world: World, mode: str) -> None:
    world.llm.mode = mode
    provider = world.provider(timeout=0.5)
    start = reactor.seconds()
    result = await provider.insight(REQUEST)
    took = reactor.seconds() - start
    assert result is None
    assert 0.45 <= took < 2.0
    assert (provider.sent, provider.answered, provider.failed) == (1, 0, 1)
    assert len(world.llm.pending) == 1
    for _ in range(200):  # the cancelled exchange drops the connection, the server sees it
        if world.llm.finished:
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert len(world.llm.finished) == 1
    assert any("within 0.5 s" in line and world.url in line for line in world.logs)


@pytest_twisted.ensureDeferred
async def test_http_500_fires_none_and_logs_status(world: World) -> None:
    world.llm.mode = "500"
    provider = world.provider()
    assert await provider.insight(REQUEST) is None
    assert (provider.sent, provider.answered, provider.failed) == (1, 0, 1)
    [line] = world.logs
    assert world.url in line
    assert "500" in line and "the model is on fire" in line


@pytest.mark.parametrize(
    ("mode", "cause"),
    [
        ("not-json", "not JSON"),
        ("no-choices", "no choices[0].message.content"),
        ("empty", "empty answer"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_answer_fires_none(world: World, mode: str, cause: str) -> None:
    world.llm.mode = mode
    provider = world.provider()
    assert await provider.insight(REQUEST) is None
    assert (provider.sent, provider.answered, provider.failed) == (1, 0, 1)
    [line] = world.logs
    assert cause in line and world.url in line


@pytest_twisted.ensureDeferred
async def test_connection_refused_fires_none(world: World) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and is closed now
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    url = f"http://127.0.0.1:{closed}/v1/chat/completions"
    provider = world.provider(url=url)
    assert await provider.insight(REQUEST) is None
    assert (provider.sent, provider.answered, provider.failed) == (1, 0, 1)
    [line] = world.logs
    assert url in line and "ConnectionRefused" in line
    assert world.llm.requests == []


@pytest_twisted.ensureDeferred
async def test_rate_limit_skips_without_a_request(world: World) -> None:
    provider = world.provider(max_per_minute=1)
    assert await provider.insight(REQUEST) is not None
    assert await provider.insight(REQUEST) is None
    assert (provider.sent, provider.answered, provider.skipped) == (1, 1, 1)
    assert len(world.llm.requests) == 1

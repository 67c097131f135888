"""Explanations for statements that are slower on the target than on the source of truth.

Two providers answer the same question ("why is the target slower?"): the heuristics that
Twinkly computes itself, and an optional LLM behind an OpenAI-compatible endpoint. An insight
is a nice-to-have: a provider never errbacks, so nothing that goes wrong here can reach a
client session. Plans sent to the LLM are redacted by default so literals stay on the machine.
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

if TYPE_CHECKING:  # treq and twisted.web are loaded only with an LLM configured
    from treq.client import HTTPClient
    from twisted.web.iweb import IAgent

log = Logger()

# Plan keys whose string values are names and words of EXPLAIN's own, never data: kept.
# Every other string (conditions, outputs, keys, function calls, cache keys...) has its
# literals replaced, whatever key a server version or fork puts it under.
NAME_KEYS = frozenset(
    {
        "Node Type",
        "Relation Name",
        "Schema",
        "Alias",
        "Index Name",
        "Join Type",
        "Strategy",
        "Partial Mode",
        "Parent Relationship",
        "Scan Direction",
        "Sort Method",
        "Sort Space Type",
        "Command",
        "Operation",
        "CTE Name",
        "Subplan Name",
        "Function Name",
        "Trigger Name",
        "Constraint Name",
        "Conflict Resolution",
        "Conflict Arbiter Indexes",
    }
)
PLAN_LIMIT = 12_000  # characters of compact JSON per plan in the prompt
BODY_LIMIT = 1 << 20  # an answer of a few sentences never needs more
WINDOW = 60.0  # seconds of the rate limit's sliding window
SYSTEM_PROMPT = (
    "You are a database performance expert. You get one SQL statement and its EXPLAIN plans "
    "on two PostgreSQL servers: the source of truth and the target, where it ran slower. "
    "Name the most likely cause of the slowdown on the target and the fix, "
    "in at most 5 sentences."
)

# Double-quoted identifiers are kept, string literals ('' escapes) and numbers are replaced.
_TOKENS = re.compile(
    r"""(?P<ident>"(?:[^"]|"")*")"""
    r"""|(?P<string>'(?:[^']|'')*')"""
    r"""|(?<![\w$.])(?P<minus>-?)(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?![\w$.])"""
)
_OPERAND_END = re.compile(r"[\w)\]'\"]\s*$")  # text before a '-' that makes it binary


class IInsightProvider(Interface):
    """Something that can explain why a statement is slower on the target."""

    name = Attribute("Short name written into events: 'heuristics' or 'llm'.")

    def insight(request: dict) -> Deferred:
        """Fire with an insight dict or None; never errback."""


def redact_text(text: str, numbers: bool = True) -> str:
    """Replace string literals by '?' and (optionally) numeric literals by ?."""

    def replace(match: re.Match[str]) -> str:
        if match.group("ident") is not None:
            return match.group(0)
        if match.group("string") is not None:
            return "'?'"
        if not numbers:
            return match.group(0)
        binary = match.group("minus") and _OPERAND_END.search(text, 0, match.start())
        return "-?" if binary else "?"

    return _TOKENS.sub(replace, text)


def redact_plan(plan: Any) -> Any:
    """A copy of an EXPLAIN (FORMAT JSON) plan with the literals of every string replaced,
    but for the names in NAME_KEYS."""

    def walk(value: Any, name: bool) -> Any:
        if isinstance(value, str):
            return value if name else redact_text(value)
        if isinstance(value, list):
            return [walk(item, name) for item in value]
        if isinstance(value, dict):
            return {key: walk(item, key in NAME_KEYS) for key, item in value.items()}
        return value

    return walk(plan, False)


def _compact(plan: Any, limit: int = PLAN_LIMIT) -> str:
    text = json.dumps(plan, separators=(",", ":"), ensure_ascii=False, default=str)
    if len(text) > limit:
        return text[:limit] + f"... [truncated, {len(text)} characters in all]"
    return text


def build_messages(request: dict, redact: bool) -> list[dict]:
    """The chat messages for one slow statement (plans redacted when ``redact``)."""
    lines = [f"Statement:\n{request.get('statement', '')}", ""]
    for role in ("truth", "target"):
        side = request.get(role) or {}
        label = side.get("label", role)
        elapsed = side.get("elapsed_ms")
        took = f"{elapsed:.3f} ms" if isinstance(elapsed, int | float) else "unknown time"
        title = "Source of truth" if role == "truth" else "Target"
        lines.append(f"{title} {label!r} took {took}.")
        plan = side.get("plan")
        if plan is not None:
            shown = _compact(redact_plan(plan) if redact else plan)
            lines.append(f"EXPLAIN plan on {label!r}: {shown}")
        else:
            error = str(side.get("plan_error") or "no plan")
            # An error message may quote a value in any form: not sent when redacting.
            lines.append(f"No plan on {label!r}: {'(error not shown)' if redact else error}")
        lines.append("")
    findings = request.get("heuristics") or []
    lines.append("Heuristic findings:" if findings else "Heuristic findings: none.")
    for finding in findings:
        message = str(finding.get("message", ""))
        if redact:  # numbers in findings are estimates and timings, not literals
            message = redact_text(message, numbers=False)
        relation = f" (relation {finding['relation']})" if finding.get("relation") else ""
        lines.append(f"- {finding.get('kind', '?')}: {message}{relation}")
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]


@implementer(IInsightProvider)
class HeuristicInsightProvider:
    """Passes on Twinkly's own findings, so events carry them like any other insight."""

    name = "heuristics"

    def insight(self, request: dict) -> Deferred:
        findings = request.get("heuristics") or []
        if not findings:
            return succeed(None)
        return succeed({"provider": self.name, "insights": findings})


class _InsightError(Exception):
    """A failed exchange with the LLM endpoint; the message is the cause to log."""


class _Body(Protocol):
    """Collects a response body; cancelling it drops the connection (for the time-out)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.done: Deferred[bytes] = Deferred(self._cancel)

    def _cancel(self, _: Deferred) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > BODY_LIMIT and not self.done.called:
            self.done.errback(_InsightError(f"response body larger than {BODY_LIMIT} bytes"))
            self._cancel(self.done)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        from twisted.web.client import PotentialDataLoss, ResponseDone

        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def _read(response: Any) -> Deferred:
    body = _Body()
    response.deliverBody(body)
    return body.done.addCallback(lambda data: (response.code, data))


def _timed_out(result: Any, timeout: float) -> Failure:
    return Failure(TimeoutError(f"no complete answer within {timeout} s"))


@implementer(IInsightProvider)
class LLMInsightProvider:
    """Asks an OpenAI-compatible chat-completions endpoint, within a time and rate budget."""

    name = "llm"

    def __init__(
        self,
        client: HTTPClient | IAgent,
        endpoint: str,
        model: str,
        api_key: str | None,
        timeout: float,
        max_per_minute: int,
        redact: bool,
        clock: IReactorTime,
    ) -> None:
        from treq.client import HTTPClient
        from twisted.web.iweb import IAgent

        self._client = HTTPClient(client) if IAgent.providedBy(client) else client
        self.endpoint = endpoint
        self.model = model
        self._api_key = api_key
        self.timeout = timeout
        self.max_per_minute = max_per_minute
        self.redact = redact
        self._clock = clock
        self._recent: deque[float] = deque()  # start times inside the sliding window
        self.sent = 0
        self.answered = 0
        self.failed = 0
        self.skipped = 0

    def _allowed(self) -> bool:
        now = self._clock.seconds()
        while self._recent and self._recent[0] <= now - WINDOW:
            self._recent.popleft()
        if len(self._recent) >= self.max_per_minute:
            return False
        self._recent.append(now)
        return True

    def insight(self, request: dict) -> Deferred:
        if not self._allowed():
            self.skipped += 1
            return succeed(None)
        try:
            messages = build_messages(request, self.redact)
            body = json.dumps({"model": self.model, "messages": messages, "temperature": 0})
        except Exception as e:  # a strange request must not become an errback
            self.failed += 1
            log.warn("LLM insight not requested: bad request ({error!r})", error=e)
            return succeed(None)
        headers: dict[bytes | str, list[bytes | str]] = {b"Content-Type": [b"application/json"]}
        if self._api_key:
            headers[b"Authorization"] = [f"Bearer {self._api_key}".encode()]
        self.sent += 1
        try:
            d = self._client.post(
                self.endpoint, data=body.encode(), headers=headers, unbuffered=True
            )
        except Exception:  # e.g. a malformed endpoint URL
            d = Deferred()
            d.errback()
        d.addCallback(_read)
        # Cancelling the agent fails with ResponseNeverReceived etc.: still a time-out.
        d.addTimeout(self.timeout, self._clock, onTimeoutCancel=_timed_out)
        d.addCallback(self._parse)
        d.addCallbacks(self._answered, self._failed)
        return d

    def _parse(self, result: tuple[int, bytes]) -> dict:
        code, data = result
        excerpt = data[:200].decode("utf-8", "replace")
        if not 200 <= code < 300:
            raise _InsightError(f"HTTP status {code}, body {excerpt!r}")
        try:
            answer = json.loads(data)
        except ValueError:
            raise _InsightError(f"response is not JSON: {excerpt!r}") from None
        try:
            text = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _InsightError(f"no choices[0].message.content in {excerpt!r}") from None
        if not isinstance(text, str) or not text.strip():
            raise _InsightError(f"empty answer in {excerpt!r}")
        return {"provider": self.name, "model": self.model, "text": text.strip()}

    def _answered(self, result: dict) -> dict:
        self.answered += 1
        return result

    def _failed(self, failure: Failure) -> None:
        self.failed += 1
        if failure.check(_InsightError, TimeoutError):
            cause = failure.getErrorMessage()
        else:
            cause = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        log.warn("LLM insight from {endpoint} failed: {cause}", endpoint=self.endpoint, cause=cause)
        return None

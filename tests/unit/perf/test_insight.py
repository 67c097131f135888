"""Insight providers without a network: redaction, the prompt, heuristics, the rate limit."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twinkly.perf.insight import (
    PLAN_LIMIT,
    HeuristicInsightProvider,
    IInsightProvider,
    LLMInsightProvider,
    build_messages,
    redact_plan,
    redact_text,
)


def plan_json(filter_: str = "(name = 'O''Brien'::text)", extra: Any = None) -> list:
    """An EXPLAIN (FORMAT JSON) result with a join of two scans and literals in conditions."""
    inner = {
        "Node Type": "Index Scan",
        "Relation Name": "orders",
        "Index Name": "orders_customer_id_idx",
        "Index Cond": "(customer_id = 4242)",
        "Filter": "(amount > -3.5e2)",
        "Output": ["o.id", "o.col1", "'secret-out'::text"],
        "Total Cost": 12.5,
        "Plan Rows": 7,
    }
    outer = {
        "Node Type": "Seq Scan",
        "Relation Name": "customers",
        "Alias": "c1",
        "Filter": filter_,
        "Sort Key": ["c1.id", "(c1.score * 17)"],
        "Plan Rows": 100,
    }
    root = {
        "Node Type": "Nested Loop",
        "Join Type": "Inner",
        "Join Filter": "(c1.id = o.customer_id + 99)",
        "Plans": [outer, inner],
    }
    if extra is not None:
        root["Extra"] = extra
    return [{"Plan": root, "Planning Time": 0.1, "Execution Time": 9.5}]


def request(**changes: Any) -> dict:
    req = {
        "statement": "SELECT * FROM customers c1 JOIN orders o ON c1.id = o.id WHERE x = $1",
        "fingerprint": "fp-1",
        "truth": {"label": "pg15", "elapsed_ms": 1.25, "plan": plan_json(), "plan_error": None},
        "target": {"label": "pg18", "elapsed_ms": 80.5, "plan": plan_json(), "plan_error": None},
        "heuristics": [
            {"kind": "seq_scan", "message": "Seq Scan on customers", "relation": "customers"}
        ],
    }
    req.update(changes)
    return req


def result_of(d: Deferred) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


class NeverClient:
    """An HTTP client whose requests never answer: counts them, cancels cleanly."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict]] = []

    def post(self, url: str, **kwargs: Any) -> Deferred:
        self.posts.append((url, kwargs))
        return Deferred()


class RedactTextTests(SynchronousTestCase):
    def test_string_literal_with_escaped_quotes(self) -> None:
        self.assertEqual(redact_text("(name = 'O''Brien'::text)"), "(name = '?'::text)")
        self.assertEqual(redact_text("(a = '''x''' OR b = '')"), "(a = '?' OR b = '?')")

    def test_numbers_but_not_identifiers(self) -> None:
        self.assertEqual(redact_text("(col1 = 42)"), "(col1 = ?)")
        self.assertEqual(redact_text("(x > -3.5e2)"), "(x > ?)")
        self.assertEqual(redact_text("(t2.c3 < .5)"), "(t2.c3 < ?)")
        self.assertEqual(redact_text("(a - 3)"), "(a - ?)")
        self.assertEqual(redact_text("($1 = x)"), "($1 = x)")
        self.assertEqual(redact_text('("col 7" = 7)'), '("col 7" = ?)')

    def test_numbers_kept_on_request(self) -> None:
        self.assertEqual(redact_text("'a' 12 rows", numbers=False), "'?' 12 rows")


class RedactPlanTests(SynchronousTestCase):
    def test_conditions_of_nested_plans_are_redacted(self) -> None:
        redacted = redact_plan(plan_json())
        root = redacted[0]["Plan"]
        outer, inner = root["Plans"]
        self.assertEqual(root["Join Filter"], "(c1.id = o.customer_id + ?)")
        self.assertEqual(outer["Filter"], "(name = '?'::text)")
        self.assertEqual(outer["Sort Key"], ["c1.id", "(c1.score * ?)"])
        self.assertEqual(inner["Index Cond"], "(customer_id = ?)")
        self.assertEqual(inner["Filter"], "(amount > ?)")
        self.assertEqual(inner["Output"], ["o.id", "o.col1", "'?'::text"])

    def test_other_keys_are_untouched(self) -> None:
        original = plan_json()
        redacted = redact_plan(original)
        inner = redacted[0]["Plan"]["Plans"][1]
        self.assertEqual(inner["Index Name"], "orders_customer_id_idx")
        self.assertEqual(inner["Total Cost"], 12.5)
        self.assertEqual(inner["Plan Rows"], 7)
        self.assertEqual(redacted[0]["Plan"]["Plans"][0]["Alias"], "c1")
        self.assertEqual(redacted[0]["Execution Time"], 9.5)

    def test_every_string_but_names_is_redacted(self) -> None:
        """Keys a server adds (a fork's, a new version's) may hold data too."""
        redacted = redact_plan(
            plan_json(
                extra={
                    "Note": "x = 'leak' and 5",
                    "Function Call": "generate_series(1, 987654)",
                    "Cache Key": "t.a = 31337",
                }
            )
        )
        self.assertEqual(
            redacted[0]["Plan"]["Extra"],
            {
                "Note": "x = '?' and ?",
                "Function Call": "generate_series(?, ?)",
                "Cache Key": "t.a = ?",
            },
        )

    def test_names_are_kept(self) -> None:
        plan = plan_json()
        plan[0]["Plan"]["Index Name"] = "orders_2024_idx"
        self.assertEqual(redact_plan(plan)[0]["Plan"]["Index Name"], "orders_2024_idx")

    def test_returns_a_copy(self) -> None:
        original = plan_json()
        before = json.dumps(original)
        redact_plan(original)
        self.assertEqual(json.dumps(original), before)


class BuildMessagesTests(SynchronousTestCase):
    def test_labels_times_plans_and_findings(self) -> None:
        messages = build_messages(request(), redact=False)
        self.assertEqual([m["role"] for m in messages], ["system", "user"])
        self.assertIn("performance", messages[0]["content"])
        user = messages[1]["content"]
        for text in ("pg15", "pg18", "1.250 ms", "80.500 ms", "Seq Scan on customers"):
            self.assertIn(text, user)
        self.assertIn("WHERE x = $1", user)
        self.assertIn("O''Brien", user)  # not redacted on request
        self.assertIn('"Relation Name":"orders"', user)  # compact JSON

    def test_no_literal_left_when_redacted(self) -> None:
        req = request()
        req["truth"]["plan_error"] = "ignored"
        req["target"] = {
            "label": "pg18",
            "elapsed_ms": 3.0,
            "plan": None,
            "plan_error": "invalid input 'secret-err'",
        }
        req["heuristics"][0]["message"] = "filter (name = 'secret-h') on 250 rows"
        user = build_messages(req, redact=True)[1]["content"]
        for literal in ("Brien", "4242", "3.5e2", "99", "17", "secret"):
            self.assertNotIn(literal, user)
        self.assertIn("on 250 rows", user)  # numbers in findings are estimates, kept
        self.assertIn("No plan on 'pg18'", user)

    def test_plans_are_truncated(self) -> None:
        huge = plan_json(extra=["x" * 50 for _ in range(1000)])
        req = request(truth={"label": "pg15", "elapsed_ms": 1.0, "plan": huge, "plan_error": None})
        user = build_messages(req, redact=False)[1]["content"]
        self.assertIn("truncated", user)
        self.assertLess(len(user), 2 * PLAN_LIMIT + 2000)
        self.assertEqual(user.count("truncated"), 1)  # the small target plan is whole


class HeuristicProviderTests(SynchronousTestCase):
    def test_findings_are_passed_on(self) -> None:
        provider = HeuristicInsightProvider()
        verifyObject(IInsightProvider, provider)
        self.assertEqual(provider.name, "heuristics")
        result = result_of(provider.insight(request()))
        self.assertEqual(result["provider"], "heuristics")
        self.assertEqual(result["insights"], request()["heuristics"])

    def test_no_findings_no_insight(self) -> None:
        self.assertIsNone(result_of(HeuristicInsightProvider().insight(request(heuristics=[]))))


class LLMProviderTests(SynchronousTestCase):
    def provider(self, client: Any, clock: Clock, **kwargs: Any) -> LLMInsightProvider:
        options = {"api_key": "k", "timeout": 5.0, "max_per_minute": 2, "redact": True}
        options.update(kwargs)
        return LLMInsightProvider(
            client, "http://127.0.0.1:9/v1/chat/completions", "m", clock=clock, **options
        )

    def test_interface(self) -> None:
        provider = self.provider(NeverClient(), Clock())
        verifyObject(IInsightProvider, provider)
        self.assertEqual(provider.name, "llm")

    def test_rate_limit_window_slides(self) -> None:
        clock, client = Clock(), NeverClient()
        provider = self.provider(client, clock, timeout=1000.0)
        first, second = provider.insight(request()), provider.insight(request())
        self.assertFalse(first.called or second.called)
        clock.advance(30)
        self.assertIsNone(result_of(provider.insight(request())))  # synchronously
        self.assertEqual((provider.sent, provider.skipped, len(client.posts)), (2, 1, 2))
        clock.advance(30)  # the first two leave the window
        third = provider.insight(request())
        self.assertFalse(third.called)
        self.assertEqual((provider.sent, provider.skipped, len(client.posts)), (3, 1, 3))
        self.assertEqual(provider.failed, 0)
        for d in (first, second, third):
            d.cancel()
            self.assertIsNone(result_of(d))  # cancelled: None, not an errback
        self.assertEqual(provider.failed, 3)

    def test_timeout_fires_none_with_the_clock(self) -> None:
        clock, client = Clock(), NeverClient()
        provider = self.provider(client, clock, timeout=5.0)
        with capturedLogs() as events:
            d = provider.insight(request())
            clock.advance(4.9)
            self.assertFalse(d.called)
            clock.advance(0.2)
            self.assertIsNone(result_of(d))
        self.assertEqual((provider.sent, provider.failed, provider.answered), (1, 1, 0))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(any("within 5.0 s" in str(e.get("cause")) for e in events))

    def test_request_is_json_with_model_and_key(self) -> None:
        client = NeverClient()
        provider = self.provider(client, Clock(), api_key="sekrit")
        provider.insight(request()).cancel()
        url, kwargs = client.posts[0]
        self.assertEqual(url, "http://127.0.0.1:9/v1/chat/completions")
        body = json.loads(kwargs["data"])
        self.assertEqual((body["model"], body["temperature"]), ("m", 0))
        self.assertEqual(kwargs["headers"][b"Authorization"], [b"Bearer sekrit"])
        self.assertEqual(kwargs["headers"][b"Content-Type"], [b"application/json"])
        self.assertNotIn("Brien", kwargs["data"].decode())

    def test_no_key_no_authorization(self) -> None:
        client = NeverClient()
        self.provider(client, Clock(), api_key=None).insight(request()).cancel()
        self.assertNotIn(b"Authorization", client.posts[0][1]["headers"])

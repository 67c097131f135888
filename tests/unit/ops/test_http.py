"""The HTTP status server, driven without a reactor: every route through the real Site's
resource lookup, with a DummyRequest and a fake IStatus."""

from __future__ import annotations

import datetime
import decimal
import json
import math
import uuid
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twinkly.ops.http import MAX_LIMIT, encode_json, load_dashboard, make_site
from twinkly.ops.status import IStatus

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_BODY = b"# HELP twinkly_statements_total x\ntwinkly_statements_total 3.0\n"


def event(number: int, kind: str = "result_mismatch", **extra: Any) -> dict:
    """A report-shaped event; ids sort like the numbers, as real (ULID) ids sort by time."""
    base = {
        "id": f"01J{number:023d}",
        "time": "2024-05-01T12:00:00.000Z",
        "kind": kind,
        "session": 1,
        "statement": f"SELECT {number}",
        "fingerprint": f"fp{number % 7}",
        "truth": {"label": "pg15", "rows": 1, "tag": "SELECT 1"},
        "target": {"label": "pg18", "rows": 1, "tag": "SELECT 1"},
        "differences": [],
        "reason": None,
    }
    base.update(extra)
    return base


@implementer(IStatus)
class FakeStatus:
    """Enough of a running proxy for the HTTP server: canned answers, recorded calls."""

    started = 1_700_000_000.0

    def __init__(self, events: list[dict] | None = None) -> None:
        self._events = sorted(events or [], key=lambda e: e["id"], reverse=True)
        self.ready_result: Deferred = succeed((True, {"truth": None, "target": None}))
        self.calls: list[tuple] = []
        self.totals_value: dict = {
            "sessions": 2,
            "statements": 10,
            "outcomes": {"matched": 9, "mismatched": 1},
            "events": {"result_mismatch": 1},
            "backends": {"truth": "pg15", "target": "pg18"},
            "uptime_s": 12.5,
        }
        self.fingerprints_value: list = [{"fingerprint": "fp1", "statement": "SELECT $1"}]

    def totals(self) -> dict:
        return self.totals_value

    def events(self, kind: str | None = None, limit: int = 50, before: str | None = None) -> list:
        self.calls.append(("events", kind, limit, before))
        found = [
            e
            for e in self._events
            if (kind is None or e["kind"] == kind) and (before is None or e["id"] < before)
        ]
        return found[:limit]

    def fingerprints(self) -> list:
        return self.fingerprints_value

    def sessions(self) -> list:
        return []

    def config_items(self) -> list:
        return []

    def mute(self, fingerprint: str) -> bool:
        return True

    def unmute(self, fingerprint: str) -> bool:
        return True

    def trace(self, session_id: int, on: bool) -> str:
        return ""

    def reset_timings(self) -> int:
        return 0

    def reload(self) -> list:
        return []

    def ready(self) -> Deferred:
        return self.ready_result


def metrics() -> tuple[bytes, str]:
    return METRICS_BODY, METRICS_TYPE


def request_for(
    path: str, method: bytes = b"GET", args: dict[str, str] | None = None
) -> DummyRequest:
    request = DummyRequest([s.encode() for s in path.lstrip("/").split("/")])
    request.method = method
    request.uri = path.encode()
    for name, value in (args or {}).items():
        request.addArg(name.encode(), value.encode())
    return request


def start(site: Site, request: DummyRequest) -> Any:
    """Render as the Site would: a bytes answer is written and the request finished."""
    resource = site.getResourceFor(request)
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return result


def header(request: DummyRequest, name: str) -> str | None:
    values = request.responseHeaders.getRawHeaders(name.encode())
    return values[-1].decode() if values else None


def body(request: DummyRequest) -> bytes:
    return b"".join(request.written)


def strict_json(request: DummyRequest) -> Any:
    """The answer as JSON a browser would accept: no NaN or Infinity constants."""

    def reject(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    text = body(request)
    text.decode("ascii")  # ASCII only, whatever the data
    return json.loads(text, parse_constant=reject)


class SiteTestsBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.status = FakeStatus([event(n) for n in range(1, 121)])
        self.site = make_site(self.status, metrics)

    def get(self, path: str, method: bytes = b"GET", **args: str) -> DummyRequest:
        request = request_for(path, method, args)
        start(self.site, request)
        self.assertEqual(request.finished, 1)
        return request

    def assertJSON(self, request: DummyRequest, code: int = 200) -> Any:
        self.assertEqual(request.responseCode or 200, code)
        self.assertEqual(header(request, "content-type"), "application/json; charset=utf-8")
        self.assertEqual(header(request, "cache-control"), "no-store")
        return strict_json(request)


class FakeStatusTests(SynchronousTestCase):
    def test_fake_provides_istatus(self) -> None:
        self.assertTrue(verifyObject(IStatus, FakeStatus()))

    def test_make_site(self) -> None:
        site = make_site(FakeStatus(), metrics)
        self.assertIsInstance(site, Site)
        self.assertFalse(site.displayTracebacks)


class PlainRouteTests(SiteTestsBase):
    def test_healthz(self) -> None:
        request = self.get("/healthz")
        self.assertEqual(request.responseCode or 200, 200)
        self.assertEqual(body(request), b"ok")
        self.assertTrue(header(request, "content-type").startswith("text/plain"))

    def test_metrics_passes_body_and_type(self) -> None:
        request = self.get("/metrics")
        self.assertEqual(body(request), METRICS_BODY)
        self.assertEqual(header(request, "content-type"), METRICS_TYPE)

    def test_dashboard(self) -> None:
        request = self.get("/")
        self.assertEqual(header(request, "content-type"), "text/html; charset=utf-8")
        self.assertIn("default-src 'none'", header(request, "content-security-policy"))
        page = body(request)
        self.assertEqual(page, load_dashboard())
        for marker in (b'id="totals"', b'id="mismatches"', b'id="slow"', b'id="fingerprints"'):
            self.assertIn(marker, page)

    def test_dashboard_never_uses_markup_sinks(self) -> None:
        """Event data holds '<': the page must build nodes and set text, never parse HTML."""
        page = load_dashboard().decode()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            self.assertNotIn(sink, page)
        for external in ("http://", "https://", "src="):  # no internet where it runs
            self.assertNotIn(external, page)

    def test_totals(self) -> None:
        self.assertEqual(self.assertJSON(self.get("/api/totals")), self.status.totals_value)

    def test_fingerprints(self) -> None:
        answer = self.assertJSON(self.get("/api/fingerprints"))
        self.assertEqual(answer, {"fingerprints": self.status.fingerprints_value})

    def test_head_is_allowed(self) -> None:
        request = self.get("/healthz", method=b"HEAD")
        self.assertEqual(request.responseCode or 200, 200)

    def test_unknown_path_is_404(self) -> None:
        for path in ("/nope", "/api", "/api/events/", "/metrics/x", "/api/totals/"):
            answer = self.assertJSON(self.get(path), 404)
            self.assertEqual(answer["error"], "not found")

    def test_other_methods_are_405(self) -> None:
        for method in (b"POST", b"PUT", b"DELETE", b"PATCH"):
            request = self.get("/api/totals", method=method)
            answer = self.assertJSON(request, 405)
            self.assertIn(method.decode(), answer["error"])
            self.assertEqual(header(request, "allow"), "GET, HEAD")

    def test_failing_status_is_500_without_details(self) -> None:
        def broken() -> dict:
            raise RuntimeError("secret internals")

        self.status.totals = broken  # type: ignore[method-assign]
        request = self.get("/api/totals")
        self.assertEqual(self.assertJSON(request, 500), {"error": "internal error"})
        self.assertNotIn(b"secret", body(request))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class EventsTests(SiteTestsBase):
    def test_default_limit_and_newest_first(self) -> None:
        answer = self.assertJSON(self.get("/api/events"))
        ids = [e["id"] for e in answer["events"]]
        self.assertEqual(len(ids), 50)
        self.assertEqual(ids, sorted(ids, reverse=True))
        self.assertEqual(ids[0], event(120)["id"])
        self.assertEqual(answer["next"], ids[-1])
        self.assertEqual(self.status.calls[-1], ("events", None, 51, None))

    def test_paging_follows_next_to_the_end(self) -> None:
        seen: list[str] = []
        before: str | None = None
        pages = 0
        while True:
            args = {"limit": "25"} | ({"before": before} if before else {})
            answer = self.assertJSON(self.get("/api/events", **args))
            pages += 1
            seen.extend(e["id"] for e in answer["events"])
            before = answer["next"]
            if before is None:
                break
        self.assertEqual(pages, 5)
        self.assertEqual(seen, [event(n)["id"] for n in range(120, 0, -1)])

    def test_exact_last_page_has_no_next(self) -> None:
        answer = self.assertJSON(self.get("/api/events", limit="120"))
        self.assertEqual(len(answer["events"]), 120)
        self.assertIsNone(answer["next"])

    def test_kind_filter(self) -> None:
        status = FakeStatus([event(1), event(2, "slow_query", ratio=3.0), event(3, "noise")])
        self.site = make_site(status, metrics)
        answer = self.assertJSON(self.get("/api/events", kind="slow_query"))
        self.assertEqual([e["kind"] for e in answer["events"]], ["slow_query"])
        self.assertEqual(answer["events"][0]["ratio"], 3.0)
        self.assertEqual(status.calls[-1][1], "slow_query")
        self.assertIsNone(answer["next"])

    def test_empty_kind_means_all(self) -> None:
        self.get("/api/events", kind="")
        self.assertIsNone(self.status.calls[-1][1])

    def test_limit_is_capped(self) -> None:
        status = FakeStatus([event(n) for n in range(1, MAX_LIMIT + 101)])
        self.site = make_site(status, metrics)
        answer = self.assertJSON(self.get("/api/events", limit="100000"))
        self.assertEqual(len(answer["events"]), MAX_LIMIT)
        self.assertIsNotNone(answer["next"])

    def test_bad_limit_is_400_naming_it(self) -> None:
        for bad in ("abc", "0", "-3", "1.5", "1e3"):
            answer = self.assertJSON(self.get("/api/events", limit=bad), 400)
            self.assertEqual(answer["parameter"], "limit")
            self.assertIn("limit", answer["error"])
        self.assertEqual(self.status.calls, [])

    def test_odd_values_are_strict_ascii_json(self) -> None:
        odd = event(
            1,
            statement="SELECT '</script><b>é'",
            truth={"rows": [b"\x00\xff", decimal.Decimal("1.10"), uuid.UUID(int=1)]},
            target={"when": datetime.datetime(2024, 5, 1, 12, 0), "set": {3, 1}},
            differences=[{"truth": [math.nan], "target": [math.inf, -math.inf]}],
            extra={1: object(), (2, 3): "tuple key"},
        )
        self.site = make_site(FakeStatus([odd]), metrics)
        got = self.assertJSON(self.get("/api/events"))["events"][0]
        self.assertEqual(got["statement"], "SELECT '</script><b>é'")
        self.assertEqual(got["truth"]["rows"], ["\\x00ff", "1.10", str(uuid.UUID(int=1))])
        self.assertEqual(got["target"], {"when": "2024-05-01T12:00:00", "set": [1, 3]})
        self.assertEqual(
            got["differences"], [{"truth": ["NaN"], "target": ["Infinity", "-Infinity"]}]
        )
        self.assertEqual(set(got["extra"]), {"1", "(2, 3)"})

    def test_encode_json_survives_a_cycle(self) -> None:
        loop: list = []
        loop.append(loop)
        self.assertTrue(encode_json({"loop": loop}).startswith(b'{"loop": [['))


class ReadyTests(SiteTestsBase):
    def test_ready(self) -> None:
        answer = self.assertJSON(self.get("/readyz"))
        self.assertEqual(answer, {"ready": True, "reasons": {"truth": None, "target": None}})

    def test_not_ready_is_503_with_reasons(self) -> None:
        self.status.ready_result = succeed((False, {"truth": None, "target": "refused"}))
        answer = self.assertJSON(self.get("/readyz"), 503)
        self.assertEqual(answer, {"ready": False, "reasons": {"truth": None, "target": "refused"}})

    def test_failed_check_is_503(self) -> None:
        self.status.ready_result = fail(RuntimeError("boom"))
        answer = self.assertJSON(self.get("/readyz"), 503)
        self.assertEqual(answer, {"ready": False, "reasons": {"error": "boom"}})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_waits_for_the_check(self) -> None:
        pending: Deferred = Deferred()
        self.status.ready_result = pending
        request = request_for("/readyz")
        self.assertIs(start(self.site, request), NOT_DONE_YET)
        self.assertEqual((request.written, request.finished), ([], 0))
        pending.callback((True, {"truth": None, "target": None}))
        self.assertEqual(request.finished, 1)
        self.assertTrue(self.assertJSON(request)["ready"])

    def test_client_gone_before_the_answer(self) -> None:
        for outcome in (
            lambda d: d.callback((True, {})),
            lambda d: d.errback(Failure(RuntimeError("late"))),
        ):
            pending: Deferred = Deferred()
            self.status.ready_result = pending
            request = request_for("/readyz")
            self.assertIs(start(self.site, request), NOT_DONE_YET)
            request.processingFailed(Failure(ConnectionDone("client hung up")))
            outcome(pending)  # must neither write nor finish, nor leave an unhandled error
            self.assertEqual((request.written, request.finished), ([], 0))
            self.assertIsNone(request.responseCode)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

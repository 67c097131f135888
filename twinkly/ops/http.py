"""The HTTP status server: Prometheus metrics, health and readiness probes, a small JSON API
over :class:`~twinkly.ops.status.IStatus` and the live dashboard page.

One leaf resource dispatches on the path, so every route, the 404 and the 405 live in one
table and a test can drive the whole site with a ``DummyRequest`` and no reactor. Everything
here only reads the proxy's state: nothing an HTTP client sends can change what the proxy does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from importlib import resources
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from twinkly.ops.status import IStatus
from twinkly.report.events import json_default

log = Logger()

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
JSON_TYPE = b"application/json; charset=utf-8"
HTML_TYPE = b"text/html; charset=utf-8"
ALLOWED = b"GET, HEAD"
# The page is self-contained: inline script and style, data only from this origin.
DASHBOARD_CSP = (
    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    b"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
)
_MAX_DEPTH = 64

Metrics = Callable[[], tuple[bytes, str]]


class BadRequest(Exception):
    """A query parameter the API cannot use: answered with 400 naming the parameter."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


def _plain(value: Any, depth: int = 0) -> Any:
    """A copy strict JSON can hold: NaN/infinities as text, non-string keys as text.

    Only used when the fast path fails, so an odd value costs nothing in the usual case; the
    depth limit turns a reference cycle into its repr instead of endless recursion."""
    if depth > _MAX_DEPTH:
        return repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str) else str(k)): _plain(v, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    return value


def encode_json(value: Any) -> bytes:
    """Strict ASCII JSON (a browser's ``JSON.parse`` rejects NaN), never failing on a value:
    bytes become ``\\x`` hex as in the report files, anything unknown its text."""
    options: dict[str, Any] = {"default": json_default, "ensure_ascii": True, "allow_nan": False}
    try:
        text = json.dumps(value, **options)
    except (ValueError, TypeError, RecursionError):
        text = json.dumps(_plain(value), **options)
    return text.encode("ascii")


def _respond_json(request: Request, code: int, value: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON_TYPE)
    request.setHeader(b"cache-control", b"no-store")
    return encode_json(value)


def _argument(request: Request, name: str) -> str | None:
    """The last value of query parameter ``name``, or None when absent or empty."""
    # Twisted's Request declares ``args = None`` (unannotated) and documents it as this:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name.encode("ascii"))
    if not values:
        return None
    text = values[-1].decode("utf-8", errors="replace").strip()
    return text or None


def _limit(request: Request) -> int:
    """``limit``: a positive integer, capped at MAX_LIMIT so a client cannot ask for the world."""
    text = _argument(request, "limit")
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = int(text, 10)
    except ValueError:
        raise BadRequest("limit", f"limit must be a whole number, not {text!r}") from None
    if limit < 1:
        raise BadRequest("limit", f"limit must be at least 1, not {limit}")
    return min(limit, MAX_LIMIT)


class StatusResource(Resource):
    """The whole site: one table of routes, each a method answering GET (and so HEAD)."""

    isLeaf = True

    def __init__(self, status: IStatus, metrics: Metrics, dashboard: bytes) -> None:
        super().__init__()
        self.status = status
        self.metrics = metrics
        self.dashboard = dashboard
        self.routes: dict[bytes, Callable[[Request], bytes | int]] = {
            b"/": self.get_dashboard,
            b"/metrics": self.get_metrics,
            b"/healthz": self.get_healthz,
            b"/readyz": self.get_readyz,
            b"/api/events": self.get_events,
            b"/api/fingerprints": self.get_fingerprints,
            b"/api/totals": self.get_totals,
        }

    def render(self, request: Request) -> bytes | int:
        path = b"/" + b"/".join(request.postpath or [])
        route = self.routes.get(path)
        if route is None:
            return _respond_json(request, 404, {"error": "not found", "path": path.decode()})
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", ALLOWED)
            return _respond_json(
                request, 405, {"error": f"method {request.method.decode()} not allowed"}
            )
        try:
            return route(request)
        except BadRequest as e:
            return _respond_json(request, 400, {"error": e.message, "parameter": e.parameter})
        except Exception:
            # A broken status must not take the server down, nor show a traceback to clients.
            log.failure("HTTP status route {path} failed", path=path.decode())
            return _respond_json(request, 500, {"error": "internal error"})

    # --- routes -----------------------------------------------------------------------

    def get_dashboard(self, request: Request) -> bytes:
        request.setHeader(b"content-type", HTML_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-security-policy", DASHBOARD_CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        return self.dashboard

    def get_metrics(self, request: Request) -> bytes:
        body, content_type = self.metrics()
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body

    def get_healthz(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"ok"

    def get_readyz(self, request: Request) -> int:
        """200 when both backends take a login, else 503 with why. The check is a Deferred;
        a client (a load balancer's probe) may hang up before it fires, and writing to a
        lost request raises, so the answer is dropped then."""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(result: tuple[bool, dict]) -> None:
            ready, reasons = result
            if gone:
                return
            code = 200 if ready else 503
            _finish(request, code, {"ready": bool(ready), "reasons": reasons})

        def failed(failure: Failure) -> None:
            log.failure("readiness check failed", failure)
            if gone:
                return
            _finish(request, 503, {"ready": False, "reasons": {"error": failure.getErrorMessage()}})

        maybeDeferred(self.status.ready).addCallback(answer).addErrback(failed)
        return NOT_DONE_YET

    def get_events(self, request: Request) -> bytes:
        """A page of events, newest first; ``next`` is the ``before`` of the next page, null
        on the last one (one more than asked is fetched to know)."""
        limit = _limit(request)
        kind = _argument(request, "kind")
        before = _argument(request, "before")
        events = list(self.status.events(kind=kind, limit=limit + 1, before=before))
        following = None
        if len(events) > limit:
            events = events[:limit]
            following = events[-1].get("id")
        return _respond_json(request, 200, {"events": events, "next": following})

    def get_fingerprints(self, request: Request) -> bytes:
        return _respond_json(request, 200, {"fingerprints": list(self.status.fingerprints())})

    def get_totals(self, request: Request) -> bytes:
        return _respond_json(request, 200, self.status.totals())


def _finish(request: Request, code: int, value: Any) -> None:
    """Write a deferred JSON answer and end the request."""
    body = _respond_json(request, code, value)
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)  # a HEAD request's write sends the headers only
    request.finish()


def load_dashboard() -> bytes:
    """The dashboard page, shipped as package data next to this module."""
    return resources.files("twinkly.ops").joinpath("dashboard.html").read_bytes()


def make_site(status: IStatus, metrics: Metrics) -> Site:
    """The status server's site. ``metrics()`` gives the Prometheus exposition and its content
    type. The page is read now, so a missing package file fails at start, not on a click."""
    site = Site(StatusResource(status, metrics, load_dashboard()))
    site.displayTracebacks = False
    return site

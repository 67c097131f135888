"""One operator view over several worker processes (``proxy.workers``).

Every worker serves a private control site on a Unix socket of the run directory (mode
0700): ``GET /state`` (its totals, recent events, fingerprints, sessions and metrics),
and POSTs to cancel a query of one of its sessions, mute or unmute a fingerprint, reset
timings, reload, or trace a session. ``PeerStates`` polls the others' state; a
``ClusterStatus`` answers IStatus over the local worker (if any) and those snapshots, and
sends every change to all of them, so the dashboard, the admin console of any worker
and ``/metrics`` speak for the whole proxy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from twinkly.ops.http import encode_json
from twinkly.ops.status import IStatus

log = Logger()

POLL_SECONDS = 1.0
STATE_EVENTS = 50  # recent events each worker reports per poll


def control_socket(run_dir: str, worker: int) -> str:
    return str(Path(run_dir) / f"worker-{worker}.sock")


# --- the worker's side ---------------------------------------------------------------


class ControlResource(Resource):
    """A worker's private control site (only its siblings and the supervisor reach it)."""

    isLeaf = True

    def __init__(
        self,
        status: IStatus,
        metrics: Callable[[], tuple[bytes, str]],
        cancel: Callable[[int, bytes], None],
    ) -> None:
        super().__init__()
        self.status = status
        self.metrics = metrics
        self.cancel = cancel

    def render_GET(self, request: Request) -> bytes | int:
        path = request.path
        if path == b"/state":
            return self._json(request, local_state(self.status, self.metrics()[0]))
        if path == b"/readyz":
            return self._ready(request)
        request.setResponseCode(404)
        return b"not found"

    def render_POST(self, request: Request) -> bytes:
        given: dict[bytes, list[bytes]] = request.args or {}
        args = {k.decode(): v[0].decode() for k, v in given.items()}
        path, status = request.path, self.status
        try:
            if path == b"/cancel":
                self.cancel(int(args["pid"]), bytes.fromhex(args["secret"]))
                answer: Any = True
            elif path == b"/mute":
                answer = status.mute(args["fingerprint"])
            elif path == b"/unmute":
                answer = status.unmute(args["fingerprint"])
            elif path == b"/reset-timings":
                answer = status.reset_timings()
            elif path == b"/reload":
                answer = status.reload()
            elif path == b"/trace":
                answer = status.trace(int(args["session"]), args["on"] == "1")
            else:
                request.setResponseCode(404)
                return b"not found"
        except (KeyError, ValueError) as e:
            request.setResponseCode(400)
            return self._json(request, {"error": str(e)})
        except Exception as e:  # a reload's ConfigError, say: said, not raised
            request.setResponseCode(409)
            return self._json(request, {"error": str(e)})
        return self._json(request, {"answer": answer})

    def _ready(self, request: Request) -> int:
        def answer(result: tuple) -> None:
            request.write(encode_json({"ready": result[0], "reasons": result[1]}))
            request.finish()

        def failed(failure: Failure) -> None:
            request.write(encode_json({"ready": False, "reasons": {"error": str(failure.value)}}))
            request.finish()

        defer.maybeDeferred(self.status.ready).addCallbacks(answer, failed)
        return NOT_DONE_YET

    @staticmethod
    def _json(request: Request, value: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return encode_json(value)


def local_state(status: IStatus, metrics: bytes) -> dict:
    return {
        "totals": status.totals(),
        "events": status.events(limit=STATE_EVENTS),
        "fingerprints": status.fingerprints(),
        "sessions": status.sessions(),
        "config": status.config_items(),
        "metrics": metrics.decode("utf-8"),
    }


def control_site(
    status: IStatus, metrics: Callable[[], tuple[bytes, str]], cancel: Callable[[int, bytes], None]
) -> Site:
    site = QuietSite(ControlResource(status, metrics, cancel))
    site.noisy = False
    site.displayTracebacks = False
    return site


# --- reaching the others ---------------------------------------------------------------


@implementer(IAgentEndpointFactory)
class _ToWorker:
    """http://worker-3/... goes to worker 3's control socket."""

    def __init__(self, reactor: Any, run_dir: str) -> None:
        self._reactor = reactor
        self._run_dir = run_dir

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        worker = int(uri.host.decode().rpartition("-")[2])
        return UNIXClientEndpoint(self._reactor, control_socket(self._run_dir, worker), 2)


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # a poll a second would fill the log with "Starting factory"


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


class QuietSite(Site):
    """A site that writes no access log (the control site is polled every second)."""

    def log(self, request: Any) -> None:
        pass


class Workers:
    """Talks to the other workers' control sockets."""

    def __init__(self, reactor: Any, run_dir: str, count: int, me: int | None) -> None:
        pool = _QuietPool(reactor, persistent=True)
        self._agent = Agent.usingEndpointFactory(reactor, _ToWorker(reactor, run_dir), pool=pool)
        self.others = [i for i in range(count) if i != me]

    def request(self, worker: int, method: bytes, path: str) -> defer.Deferred:
        """The decoded JSON answer of one worker (fails if it cannot be reached)."""
        d = self._agent.request(method, f"http://worker-{worker}{path}".encode())
        d.addCallback(readBody)
        return d.addCallback(lambda body: json.loads(body))

    def post_all(self, path: str) -> defer.Deferred:
        """The same change on every other worker; fires with their answers (None for a
        worker that could not be reached, which is logged)."""

        def failed(failure: Failure, worker: int) -> None:
            log.warn(
                "worker {worker} did not take {path}: {error}",
                worker=worker,
                path=path,
                error=failure.getErrorMessage(),
            )

        calls = [self.request(w, b"POST", path).addErrback(failed, w) for w in self.others]
        return defer.gatherResults(calls)

    def forward_cancel(self, worker: int, process_id: int, secret: bytes) -> None:
        """A CancelRequest for a session of another worker."""
        d = self.request(worker, b"POST", f"/cancel?pid={process_id}&secret={secret.hex()}")
        d.addErrback(
            lambda f: log.warn(
                "cancel for worker {worker} lost: {error}",
                worker=worker,
                error=f.getErrorMessage(),
            )
        )


class PeerStates:
    """The last state each other worker reported, polled every POLL_SECONDS."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.states: dict[int, dict] = {}
        self._polling = False

    def poll(self) -> defer.Deferred | None:
        if self._polling:
            return None  # the last poll is still out: never pile up
        self._polling = True

        def got(state: dict, worker: int) -> None:
            self.states[worker] = state

        def missing(failure: Failure, worker: int) -> None:
            self.states.pop(worker, None)  # gone (restarting): not counted

        calls = [
            self.workers.request(w, b"GET", "/state").addCallbacks(
                got, missing, callbackArgs=(w,), errbackArgs=(w,)
            )
            for w in self.workers.others
        ]

        def done(_: object) -> None:
            self._polling = False

        return defer.gatherResults(calls).addBoth(done)


# --- the merged view -------------------------------------------------------------------


def sum_metrics(texts: Iterable[str]) -> bytes:
    """Prometheus expositions of several workers as one: samples with the same name and
    labels added up (counters, gauges of open sessions and histogram buckets alike)."""
    order: list[tuple[str, str]] = []
    families: dict[tuple[str, str], tuple[str, dict[tuple, float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            key = (family.name, family.type)  # a gauge and a counter may share a name
            if key not in families:
                order.append(key)
                families[key] = (family.documentation, {})
            samples = families[key][1]
            for sample in family.samples:
                labels = (sample.name, tuple(sorted(sample.labels.items())))
                samples[labels] = samples.get(labels, 0.0) + sample.value
    lines = []
    for name, kind in order:
        documentation, samples = families[(name, kind)]
        shown_name = f"{name}_total" if kind == "counter" else name
        lines.append(f"# HELP {shown_name} {documentation}")
        lines.append(f"# TYPE {shown_name} {kind}")
        for (sample, labels), value in samples.items():
            shown = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            where = f"{{{shown}}}" if shown else ""
            lines.append(f"{sample}{where} {_number(value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)


@implementer(IStatus)
class ClusterStatus:
    """IStatus for the whole proxy: the local worker's live status (None in the
    supervisor) and the other workers' last reported states."""

    def __init__(
        self,
        local: IStatus | None,
        peers: PeerStates,
        local_metrics: Callable[[], tuple[bytes, str]] | None,
        started: float,
    ) -> None:
        self.local = local
        self.peers = peers
        self.local_metrics = local_metrics
        self.started = local.started if local is not None else started

    def _states(self) -> list[dict]:
        states = list(self.peers.states.values())
        if self.local is not None and self.local_metrics is not None:
            states.insert(0, local_state(self.local, self.local_metrics()[0]))
        return states

    def totals(self) -> dict:
        states = self._states()
        merged: dict[str, Any] = {"sessions": 0, "sessions_total": 0, "statements": 0}
        outcomes: dict[str, int] = {}
        events: dict[str, int] = {}
        for state in states:
            totals = state["totals"]
            for key in ("sessions", "sessions_total", "statements"):
                merged[key] += totals.get(key, 0)
            for name, n in totals.get("outcomes", {}).items():
                outcomes[name] = outcomes.get(name, 0) + n
            for name, n in totals.get("events", {}).items():
                events[name] = events.get(name, 0) + n
        first = states[0]["totals"] if states else {}
        merged.update(
            outcomes=outcomes,
            events=events,
            backends=first.get("backends", {}),
            uptime_s=first.get("uptime_s", 0.0),
            workers=len(states),
        )
        return merged

    def events(self, kind: str | None = None, limit: int = 50, before: str | None = None) -> list:
        pool: list[dict] = []
        if self.local is not None:
            pool.extend(self.local.events(kind=kind, limit=limit, before=before))
        for state in self.peers.states.values():
            pool.extend(
                e
                for e in state["events"]
                if (kind is None or e["kind"] == kind) and (before is None or e["id"] < before)
            )
        pool.sort(key=lambda e: e["id"], reverse=True)
        return pool[:limit]

    def fingerprints(self) -> list:
        merged: dict[str, dict] = {}
        for state in self._states():
            for row in state["fingerprints"]:
                seen = merged.get(row["fingerprint"])
                if seen is None:
                    merged[row["fingerprint"]] = dict(row)
                    continue
                # Percentiles do not add up: those of the busiest worker are shown.
                busiest = row if row["executions"] > seen["executions"] else seen
                combined = dict(busiest)
                combined["executions"] = seen["executions"] + row["executions"]
                combined["mismatches"] = seen["mismatches"] + row["mismatches"]
                combined["muted"] = seen["muted"] or row["muted"]
                merged[row["fingerprint"]] = combined
        return sorted(merged.values(), key=lambda r: (-r["mismatches"], -r["executions"]))

    def sessions(self) -> list:
        return [s for state in self._states() for s in state["sessions"]]

    def config_items(self) -> list:
        if self.local is not None:
            return self.local.config_items()
        states = self._states()
        return [tuple(item) for item in states[0]["config"]] if states else []

    def _everywhere(self, path: str, local: Callable[[], Any]) -> Any:
        self.peers.workers.post_all(path)
        return local() if self.local is not None else None

    def mute(self, fingerprint: str) -> bool:
        answer = self._everywhere(
            f"/mute?fingerprint={quote(fingerprint)}",
            lambda: self.local.mute(fingerprint),  # type: ignore[union-attr]
        )
        return True if answer is None else bool(answer)

    def unmute(self, fingerprint: str) -> bool:
        answer = self._everywhere(
            f"/unmute?fingerprint={quote(fingerprint)}",
            lambda: self.local.unmute(fingerprint),  # type: ignore[union-attr]
        )
        return True if answer is None else bool(answer)

    def reset_timings(self) -> int:
        answer = self._everywhere(
            "/reset-timings",
            lambda: self.local.reset_timings(),  # type: ignore[union-attr]
        )
        return int(answer or 0)

    def reload(self) -> list:
        answer = self._everywhere("/reload", lambda: self.local.reload())  # type: ignore[union-attr]
        return list(answer) if answer is not None else ["sent to every worker"]

    def trace(self, session_id: int, on: bool) -> str:
        if self.local is not None and any(s["id"] == session_id for s in self.local.sessions()):
            return self.local.trace(session_id, on)
        for worker, state in self.peers.states.items():
            if any(s["id"] == session_id for s in state["sessions"]):
                path = f"/trace?session={session_id}&on={int(on)}"
                self.peers.workers.request(worker, b"POST", path)
                verb = "trace" if on else "stop tracing"
                return f"asked worker {worker} to {verb} session {session_id}"
        raise KeyError(f"no session {session_id}")

    def ready(self) -> defer.Deferred:
        if self.local is not None:
            return defer.maybeDeferred(self.local.ready)
        others = self.peers.workers.others
        if not others:
            return defer.succeed((False, {"error": "no worker"}))
        d = self.peers.workers.request(others[0], b"GET", "/readyz")
        return d.addCallback(lambda answer: (answer["ready"], answer["reasons"]))

    def metrics(self) -> tuple[bytes, str]:
        texts = [state["metrics"] for state in self._states()]
        return sum_metrics(texts), "text/plain; version=0.0.4; charset=utf-8"

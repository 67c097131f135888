"""IStatus over the running proxy: what the dashboard, the admin console and the manhole
read, and the live reload of what can change without dropping a session."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twinkly.config.schema import BackendConfig, Config, load
from twinkly.ops.status import IStatus
from twinkly.ops.trace import SessionTracer
from twinkly.proxy.backend import BackendError, connect_backend
from twinkly.proxy.factory import ProxyFactory

log = Logger()

_SECRET_WORDS = ("password", "secret", "users")
READY_CACHE = 2.0  # seconds a readiness answer is reused
# What a reload does with each changed key (flattened names, see ``flatten``). Sockets,
# backends, logins and the services around the proxy are set up once: restart. What a
# session reads when it starts applies to new sessions. Everything else (patterns,
# thresholds, switches read statement by statement) applies at once.
_RESTART = (
    "proxy.listen-",
    "proxy.max-message-bytes",
    "proxy.tls-",
    "proxy.auth",
    "postgresql.",
    "yugabytedb.",
    "reporting.",
    "debug.",
    "monitoring.http.",
    "monitoring.manhole.",
    "monitoring.progress-interval",
    "comparison.enabled",
    "comparison.source-of-truth",
    "comparison.ai.",
    "comparison.explain.max-concurrent",
    "comparison.volatile-column",
    "proxy.target-retry-",
)
_NEW_SESSIONS = (
    "proxy.flow.",
    "proxy.postgres-only-patterns",
    "proxy.yugabyte-only-patterns",
    "comparison.fail-on-differences",
    "comparison.fail-on-slow-queries",
    "comparison.hold-bytes",
    "comparison.max-target-lag",
    "comparison.max-compared-rows",
    "comparison.require-target",
    "proxy.client-login-timeout",
    "proxy.max-client-connections",
    "proxy.max-startup-connections",
    "proxy.target-stall-timeout",
)


def flatten(config: object, prefix: str = "") -> dict[str, Any]:
    """A config dataclass as ``{"comparison.slow-query-ratio": 4.0, ...}``."""
    out: dict[str, Any] = {}
    for item in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, item.name)
        key = prefix + item.name.replace("_", "-")
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


@implementer(IStatus)
class LiveStatus:
    """Reads the factory (sessions) and its monitor (outcomes, events, timings)."""

    def __init__(
        self,
        factory: ProxyFactory,
        monitor: Any,
        tracer: SessionTracer | None,
        reactor: Any,
        config_path: str | None,
        apply_comparison: Callable[[Config], None] | None = None,
    ) -> None:
        self.factory = factory
        self._monitor = monitor
        self.tracer = tracer
        self.reactor = reactor
        self.config_path = config_path
        self.apply_comparison = apply_comparison
        self.started = reactor.seconds()
        self._ready: tuple[float, tuple] | None = None  # (when, answer) of the last check
        self._checking: defer.Deferred | None = None

    @property
    def monitor(self) -> Any:
        return self._monitor

    def totals(self) -> dict:
        monitor = self.monitor
        config = self.factory.config
        outcomes = dict(monitor.outcomes) if monitor is not None else {}
        breaker = getattr(self.factory, "breaker", None)
        return {
            "sessions": len(self.factory.sessions),
            "sessions_total": self.factory.sessions_total,
            "sessions_not_compared": breaker.sessions_not_compared if breaker else 0,
            "target": breaker.describe() if breaker else {},
            "statements": sum(outcomes.values()),
            "outcomes": outcomes,
            "events": dict(monitor.events) if monitor is not None else {},
            "backends": {"truth": config.truth.label, "target": config.target.label},
            "uptime_s": round(self.reactor.seconds() - self.started, 1),
        }

    def events(self, kind: str | None = None, limit: int = 50, before: str | None = None) -> list:
        if self.monitor is None:
            return []
        out = []
        for event in reversed(self.monitor.recent):
            if kind is not None and event["kind"] != kind:
                continue
            if before is not None and event["id"] >= before:
                continue
            out.append(event)
            if len(out) >= limit:
                break
        return out

    def fingerprints(self) -> list:
        monitor = self.monitor
        if monitor is None:
            return []
        rows = []
        for snapshot in monitor.latency.snapshot():
            fingerprint = snapshot["fingerprint"]
            snapshot["mismatches"] = monitor.mismatches.get(fingerprint, 0)
            snapshot["muted"] = fingerprint in monitor.muted
            rows.append(snapshot)
        known = {row["fingerprint"] for row in rows}
        for fingerprint, count in monitor.mismatches.items():
            if fingerprint not in known:  # mismatching statements that were never timed
                rows.append(
                    {
                        "fingerprint": fingerprint,
                        "statement": monitor.statements.get(fingerprint, ""),
                        "executions": 0,
                        "mismatches": count,
                        "muted": fingerprint in monitor.muted,
                        "truth": None,
                        "target": None,
                        "p50_ratio": None,
                    }
                )
        rows.sort(key=lambda row: (-row["mismatches"], -row["executions"]))
        return rows

    def sessions(self) -> list:
        out = []
        for process_id, (_, session) in sorted(self.factory.sessions.items()):
            parameters = session.client_parameters
            peer = session.client.getPeer()  # type: ignore[attr-defined]
            out.append(
                {
                    "id": process_id,
                    "client": f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}",
                    "user": parameters.get("user", ""),
                    "database": parameters.get("database", parameters.get("user", "")),
                    "started": session.started,
                    "statements": session.statements,
                    "status": session.truth_tracker.status,
                }
            )
        return out

    def config_items(self) -> list:
        return [
            (key, "***" if value and any(w in key for w in _SECRET_WORDS) else _text(value))
            for key, value in flatten(self.factory.config).items()
        ]

    def mute(self, fingerprint: str) -> bool:
        muted = self.monitor.muted
        if fingerprint in muted:
            return False
        muted.add(fingerprint)
        return True

    def unmute(self, fingerprint: str) -> bool:
        muted = self.monitor.muted
        if fingerprint not in muted:
            return False
        muted.discard(fingerprint)
        return True

    def reset_timings(self) -> int:
        book = self.monitor.latency
        count = len(book.entries)
        book.reset()
        return count

    def trace(self, session_id: int, on: bool) -> str:
        entry = self.factory.sessions.get(session_id)
        if entry is None:
            raise KeyError(f"no session {session_id}")
        if self.tracer is None:
            raise KeyError("the protocol trace is not available")
        return self.tracer.trace_running(entry[1], on)

    def reload(self) -> list:
        """Re-read the file and apply what can change without dropping a session;
        returns the changed keys, each saying when it takes effect."""
        if self.config_path is None:
            return []
        new = load(self.config_path)
        old = self.factory.config
        before, after = flatten(old), flatten(new)
        changed = sorted(key for key in after if before.get(key) != after[key])
        replace = dataclasses.replace
        self.factory.reconfigure(
            replace(
                new,
                proxy=replace(
                    new.proxy,
                    listen_address=old.proxy.listen_address,
                    listen_port=old.proxy.listen_port,
                    max_message_bytes=old.proxy.max_message_bytes,
                    tls_cert_file=old.proxy.tls_cert_file,
                    tls_key_file=old.proxy.tls_key_file,
                    auth=old.proxy.auth,
                ),
                postgresql=old.postgresql,
                yugabytedb=old.yugabytedb,
                comparison=replace(
                    new.comparison,
                    enabled=old.comparison.enabled,
                    source_of_truth=old.comparison.source_of_truth,
                    ai=old.comparison.ai,
                    explain=replace(
                        new.comparison.explain,
                        max_concurrent=old.comparison.explain.max_concurrent,
                    ),
                ),
                reporting=old.reporting,
                monitoring=replace(
                    new.monitoring,
                    http=old.monitoring.http,
                    manhole=old.monitoring.manhole,
                    progress_interval=old.monitoring.progress_interval,
                ),
                debug=old.debug,
            )
        )
        if self.apply_comparison is not None:
            self.apply_comparison(self.factory.config)
        described = [f"{key}{_when(key)}" for key in changed]
        log.info("reload: {keys}", keys=", ".join(described) or "nothing changed")
        return described

    def ready(self) -> defer.Deferred:
        """Both backends accept a connection and a login (with the configured user;
        without one, a TCP connection is all that can be checked). One check at a time,
        its answer reused for READY_CACHE seconds: probes never become a login storm."""
        now = self.reactor.seconds()
        if self._ready is not None and now - self._ready[0] < READY_CACHE:
            return defer.succeed(self._ready[1])
        if self._checking is None:
            config = self.factory.config
            checks = [self._check(config.truth), self._check(config.target)]
            checking: defer.Deferred = defer.gatherResults(checks)
            self._checking = checking
            checking.addCallback(self._checked)
            if checking.called:  # answered at once: nothing to share
                return checking
        waiter: defer.Deferred = defer.Deferred()

        def tell(answer: tuple) -> tuple:
            waiter.callback(answer)
            return answer

        self._checking.addCallback(tell)
        return waiter

    def _checked(self, reasons: list) -> tuple:
        # Ready when the truth takes a login: without the target, sessions go on with
        # the truth alone (comparison.require-target says whether that is allowed).
        require = self.factory.config.comparison.require_target
        reasons_out: dict = {"truth": reasons[0], "target": reasons[1]}
        breaker = getattr(self.factory, "breaker", None)
        if breaker is not None:
            reasons_out["target_state"] = breaker.describe()
        ready = reasons[0] is None and (reasons[1] is None or not require)
        answer = (ready, reasons_out)
        self._ready = (self.reactor.seconds(), answer)
        self._checking = None
        return answer

    def _check(self, backend: BackendConfig) -> defer.Deferred:
        parameters = {
            "user": backend.user or "postgres",
            "database": backend.database or backend.user or "postgres",
            "application_name": "twinkly-readyz",
        }
        max_bytes = self.factory.config.proxy.max_message_bytes
        connecting = connect_backend(self.reactor, backend, parameters, max_bytes)

        def connected(protocol: Any) -> None:
            protocol.terminate()
            return None

        def failed(failure: Failure) -> str:
            if failure.check(BackendError) and backend.user is None:
                error = failure.value
                if getattr(error, "sqlstate", "08006")[:2] not in ("08",):
                    return None  # type: ignore[return-value]  # reachable; no user to log in as
            return failure.getErrorMessage()

        return connecting.addCallbacks(connected, failed)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _when(key: str) -> str:
    if key.startswith(_RESTART):
        return " (needs a restart: not applied)"
    if key.startswith(_NEW_SESSIONS):
        return " (for new sessions)"
    return ""

"""IStatus: what the HTTP server, the dashboard and the admin console may ask of a
running proxy. One implementation reads the live service; tests use small fakes."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IStatus(Interface):
    """A read-mostly view of a running proxy."""

    started = Attribute("When the proxy started, seconds since the epoch (float).")

    def totals() -> dict:
        """Live totals: ``{"sessions": int, "statements": int, "outcomes": {outcome: int},
        "events": {kind: int}, "backends": {"truth": label, "target": label},
        "uptime_s": float}``. ``outcomes`` keys are those of
        twinkly.compare.shared_state.OUTCOMES plus "one_sided_error"."""

    def events(kind: str | None = None, limit: int = 50, before: str | None = None) -> list:
        """Recent events (plain dicts as written to the report, newest first), at most
        ``limit``; only of ``kind`` when given; only with an id lower than ``before``
        when given (paging: pass the last id of the previous page)."""

    def fingerprints() -> list:
        """One dict per fingerprint, most mismatches first, then most executions:
        ``{"fingerprint": str, "statement": str (redacted), "executions": int,
        "mismatches": int, "muted": bool, "truth": {"count", "p50_ms", "p95_ms",
        "max_ms"}, "target": {same}, "p50_ratio": float | None}``."""

    def sessions() -> list:
        """One dict per client session: ``{"id": int, "client": "host:port",
        "user": str, "database": str, "started": float, "statements": int,
        "status": "I" | "T" | "E"}``."""

    def config_items() -> list:
        """``[(key, value as text), ...]`` of the effective configuration, secrets
        shown as ``"***"``."""

    def mute(fingerprint: str) -> bool:
        """Stop reporting events for ``fingerprint``; False if it was already muted."""

    def unmute(fingerprint: str) -> bool:
        """Report ``fingerprint`` again; False if it was not muted."""

    def reset_timings() -> int:
        """Forget every fingerprint's latency histograms; returns how many there were."""

    def trace(session_id: int, on: bool) -> str:
        """Start (or stop) a protocol trace of one running session; says where it goes.
        Raises KeyError for an unknown session."""

    def reload() -> list:
        """Re-read the configuration file and apply what can change live; returns the
        keys that changed. Raises twinkly.config.schema.ConfigError naming a bad key."""

    def ready():
        """A Deferred firing with ``(bool, {"truth": reason or None, "target": ...})``:
        True only when both backends accept a connection and a login."""

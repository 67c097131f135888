"""Timing paired statements: which results can be timed, and what a slow one's event
and TW003 say. The comparator calls these for every pair both backends answered."""

from __future__ import annotations

from twinkly.perf.explain import ExplainRequest
from twinkly.perf.latency import FingerprintLatency, SlowQuerySettings
from twinkly.report.describe import summary
from twinkly.sql.analysis import StatementInfo
from twinkly.sql.fingerprints import fingerprints
from twinkly.tracking.responses import StatementResult

# The requests that execute something. A Parse, Bind or Describe answer is only flushed
# with the Execute's, so its time would be the Execute's; statements answered in one
# flush (several Executes before a Sync, a multi-statement query) are not timed at all.
TIMED = frozenset(("Q", "E"))


def fingerprint_of(result: StatementResult) -> str | None:
    """The statement's fingerprint; None when its time is not its own: the statements
    of a multi-statement query are answered in one flush."""
    context = result.context
    if context is None:
        return None
    prints = fingerprints(context[0])
    if len(prints) != 1:
        return None  # several statements, or one that does not parse
    return prints[0]


def timings(truth: StatementResult, target: StatementResult, labels: tuple[str, str]) -> dict:
    """Both answers, the ratio and the reason, as event fields."""
    ratio = target.elapsed / truth.elapsed if truth.elapsed > 0 else None
    return {
        "truth": summary(truth, labels[0]),
        "target": summary(target, labels[1]),
        "ratio": None if ratio is None else round(ratio, 2),
        "reason": (
            f"{labels[1]} took {target.elapsed * 1000:.1f} ms,"
            f" {labels[0]} {truth.elapsed * 1000:.1f} ms"
        ),
    }


def again_event(
    truth: StatementResult,
    target: StatementResult,
    entry: FingerprintLatency | None,
    labels: tuple[str, str],
) -> dict:
    """A slow execution that writes no event (rate-limited), described for TW003 with
    the last event's plans."""
    last = entry.last_event if entry is not None else None
    return {**(last or {}), "kind": "slow_query", **timings(truth, target, labels)}


def remember(entry: FingerprintLatency | None, event: dict) -> None:
    """Keep what TW003 shows for the executions that write no event."""
    if entry is not None:
        entry.last_event = {
            key: event.get(key) for key in ("id", "plan_summary", "plan_errors", "insights")
        }


def history(entry: FingerprintLatency | None, settings: SlowQuerySettings) -> dict | None:
    """This fingerprint's record so far: whether the target is slow as a rule, or only
    this time (load, a lock, a cold cache)."""
    if entry is None:
        return None
    ratio = entry.p50_ratio()
    executions = entry.executions
    if executions < settings.min_samples or ratio is None:
        verdict = "too few executions to tell"
    elif ratio >= settings.ratio:
        verdict = "slow as a rule"
    else:
        verdict = "a one-off"
    return {
        "executions": executions,
        "p50_ratio": None if ratio is None else round(ratio, 2),
        "verdict": verdict,
    }


def explain_request(truth: StatementResult, info: StatementInfo | None) -> ExplainRequest | None:
    """The statement as the client ran it, for EXPLAIN on a side connection."""
    context = truth.context
    if info is None or context is None:
        return None
    return ExplainRequest(
        sql=info.sql if truth.request == "Q" else context[0],
        kind=info.kind,
        read_only=info.read_only,
        bind=context[1],
        parameter_types=tuple(context[2] or ()),
        relations=info.relations,
    )

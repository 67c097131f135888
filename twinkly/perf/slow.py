"""Writing slow_query and fingerprint_regression events, with both plans and insights.

A slow execution's event is written once both plans are in (or known to be missing), so
the report holds one complete event per slow statement; the heuristics' reading of the
plans goes in it. An LLM's answer, when enabled, comes later and is written as its own
``insight`` event pointing at the slow_query event, so a slow or failing endpoint never
holds anything up. Nothing here can fail a client session: every path ends in an event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from twinkly.perf.explain import Explainer, ExplainRequest, ExplainResult
from twinkly.perf.insight import IInsightProvider
from twinkly.perf.latency import FingerprintLatency
from twinkly.perf.plans import compare_plans, plan_summary
from twinkly.proxy.backend import SideConnection
from twinkly.report.events import make_event

log = Logger()


class SlowQueryReporter:
    """Shared by all sessions: turns slow verdicts into events."""

    def __init__(
        self,
        emit: Callable[[dict], object],
        clock: Callable[[], float],
        explainer: Explainer | None,
        providers: Sequence[IInsightProvider] = (),
        redact_for_providers: bool = True,
    ) -> None:
        self.emit = emit  # Monitor.emit: counts, mutes, keeps and writes
        self.clock = clock
        self.explainer = explainer
        self.providers = list(providers)
        self.redact_for_providers = redact_for_providers  # comparison.ai.redact
        self.pending: set[defer.Deferred] = set()

    def slow_query(
        self,
        fields: dict,
        sides: tuple[SideConnection, SideConnection] | None,
        request: ExplainRequest | None,
        redacted: str | None = None,
    ) -> defer.Deferred[dict]:
        """Take both plans, then write the event; fires with it (never errbacks).

        ``fields`` are the event's fields but for the plans and insights; ``redacted``
        is the statement with its literals replaced, for providers outside Twinkly."""
        if self.explainer is None or sides is None or request is None:
            plans: defer.Deferred = defer.succeed((None, None))
        else:
            plans = defer.gatherResults(
                [self.explainer.explain(side.config, side.parameters, request) for side in sides]
            )
        written: defer.Deferred[dict] = plans.addCallback(self._write, fields, redacted)
        written.addErrback(self._failed, fields)
        self.pending.add(written)
        written.addBoth(self._settled, written)
        return written

    def _settled(self, result: object, deferred: defer.Deferred) -> object:
        self.pending.discard(deferred)
        return result

    def _write(
        self,
        plans: tuple[ExplainResult | None, ExplainResult | None],
        fields: dict,
        redacted: str | None,
    ) -> dict:
        truth_plan, target_plan = plans
        truth_label = (fields.get("truth") or {}).get("label", "truth")
        target_label = (fields.get("target") or {}).get("label", "target")
        plan_of = {"truth": truth_plan, "target": target_plan}
        insights = compare_plans(
            truth_plan.plan if truth_plan else None,
            target_plan.plan if target_plan else None,
            truth_label,
            target_label,
        )
        history = fields.get("history") or {}
        if not insights and history.get("verdict") == "a one-off":
            insights.append(
                {
                    "kind": "one_off",
                    "message": (
                        f"the same plan on both, and this statement's median on"
                        f" {target_label} is {history.get('p50_ratio')}x the median on"
                        f" {truth_label} over {history.get('executions')} executions:"
                        " a one-off (load, a lock, a cold cache), not the plan"
                    ),
                    "relation": None,
                }
            )
        event = self._emit(
            "slow_query",
            plans={side: result.plan if result else None for side, result in plan_of.items()},
            analyzed={side: bool(result and result.analyzed) for side, result in plan_of.items()},
            plan_errors={
                side: result.error if result else "no plan was taken"
                for side, result in plan_of.items()
            },
            plan_summary={
                side: plan_summary(result.plan) if result and result.plan else None
                for side, result in plan_of.items()
            },
            insights=insights,
            **fields,
        )
        self._ask_providers(event, redacted)
        return event

    def _failed(self, failure: Failure, fields: dict) -> dict:
        """A bug here must still leave an event, and never reach a client."""
        log.failure("slow query plans failed", failure)
        return self._emit("slow_query", plans=None, insights=[], **fields)

    def _ask_providers(self, event: dict, redacted: str | None) -> None:
        statement = event.get("statement")
        if self.redact_for_providers:
            statement = redacted or "<statement not shown: it could not be redacted>"
        request = {
            "statement": statement,
            "fingerprint": event.get("fingerprint"),
            "heuristics": event.get("insights") or [],
        }
        for side in ("truth", "target"):
            request[side] = {
                "label": (event.get(side) or {}).get("label", side),
                "elapsed_ms": (event.get(side) or {}).get("elapsed_ms"),
                "plan": (event.get("plans") or {}).get(side),
                "plan_error": (event.get("plan_errors") or {}).get(side),
            }
        for provider in self.providers:
            if provider.name == "heuristics":
                continue  # already in the event itself
            try:
                asked = provider.insight(request)
            except Exception:  # a provider's bug must not cost the event its insights
                log.failure("insight provider {name} failed", name=provider.name)
                continue
            asked.addCallback(self._insight, event, provider.name)
            asked.addErrback(lambda f: log.failure("insight provider failed", f))
            self.pending.add(asked)
            asked.addBoth(self._settled, asked)

    def _insight(self, answer: dict | None, event: dict, provider: str) -> None:
        if answer is None:
            return
        self._emit(
            "insight",
            statement=event.get("statement"),
            fingerprint=event.get("fingerprint"),
            truth=None,
            target=None,
            session=event.get("session"),
            event=event["id"],
            provider=provider,
            text=answer.get("text"),
            answer=answer,
        )

    def regression(self, entry: FingerprintLatency, ratio: float, session: int | None) -> dict:
        """A fingerprint's median got slower on the target, over enough executions."""
        truth, target = entry.truth.snapshot(), entry.target.snapshot()
        return self._emit(
            "fingerprint_regression",
            session=session,
            statement=entry.statement,
            fingerprint=entry.fingerprint,
            truth=truth,
            target=target,
            ratio=round(ratio, 3),
            executions=entry.executions,
            reason=(
                f"median {target['p50_ms']} ms on the target against {truth['p50_ms']} ms"
                f" over {entry.executions} executions"
            ),
        )

    def _emit(self, kind: str, **fields: object) -> dict:
        session = fields.pop("session", None)
        event = make_event(kind, now=self.clock(), session=session, **fields)  # type: ignore[arg-type]
        self.emit(event)
        return event

    @defer.inlineCallbacks
    def flush(self):  # type: ignore[no-untyped-def]
        """Wait for the events still being prepared, and for the insights they ask for
        meanwhile (at shutdown: nothing is lost). Each is bounded by its own time-out."""
        while self.pending:
            yield defer.DeferredList(list(self.pending), consumeErrors=True)

"""EXPLAIN a slow statement on a side connection, never in the client's session.

A statement is run again only when that provably cannot change anything: a plain
SELECT with no data-modifying CTE, no row locks and only allow-listed functions (see
``StatementInfo.read_only``) reading only plain tables without row security (checked in
the catalog first: a view or a policy could call anything) gets ``EXPLAIN (ANALYZE,
BUFFERS, FORMAT JSON)``; anything else gets plain ``EXPLAIN (FORMAT JSON)``, which plans
without executing. Both run inside
``BEGIN READ ONLY`` ... ``ROLLBACK`` with a statement_timeout, on a fresh connection that
logs in like the session did, and extended-protocol parameters are bound exactly as the
client bound them. Concurrency is bounded and the queue is capped: a burst of slow
statements costs a few side connections, never the hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twinkly.config.schema import BackendConfig, ExplainConfig
from twinkly.perf.plans import parse_plan
from twinkly.proxy.backend import BackendError, BackendProtocol
from twinkly.sql.quoting import quote_identifier, quote_literal
from twinkly.wire.buffers import Reader
from twinkly.wire.framing import ProtocolViolation
from twinkly.wire.frontend import Bind, Execute, Parse, Query, Sync, encode

log = Logger()

EXPLAINABLE = frozenset(("select", "insert", "update", "delete", "merge"))
_MARGIN = 2.0  # seconds past statement_timeout before Twinkly drops a side connection


@dataclass(frozen=True)
class ExplainRequest:
    """One statement as the client ran it: its own SQL text and, in the extended
    protocol, the raw Bind payload and the Parse's parameter types."""

    sql: str
    kind: str
    read_only: bool
    bind: bytes | None = None
    parameter_types: tuple[int, ...] = ()
    relations: tuple[tuple[str, ...], ...] = ()  # what it reads: (schema, name) as named


@dataclass(frozen=True)
class ExplainResult:
    plan: list | None = None
    analyzed: bool = False
    error: str | None = None

    def as_dict(self) -> dict:
        return {"plan": self.plan, "analyzed": self.analyzed, "error": self.error}


Connect = Callable[[BackendConfig, dict[str, str]], defer.Deferred[BackendProtocol]]


class Explainer:
    """Takes plans on side connections, a bounded number at a time."""

    def __init__(self, settings: ExplainConfig, connect: Connect, clock: IReactorTime) -> None:
        self.settings = settings
        self._connect = connect
        self._clock = clock
        self._slots = defer.DeferredSemaphore(settings.max_concurrent)
        self.waiting = 0
        self.taken = 0
        self.dropped = 0  # requests refused because the queue was full
        self.failed = 0

    def explain(
        self, config: BackendConfig, parameters: dict[str, str], request: ExplainRequest
    ) -> defer.Deferred[ExplainResult]:
        """Fires with the plan or with why there is none; never errbacks."""
        if not self.settings.enabled:
            return defer.succeed(ExplainResult(error="comparison.explain.enabled is off"))
        if request.kind not in EXPLAINABLE:
            return defer.succeed(ExplainResult(error=f"a {request.kind} statement has no plan"))
        if self.waiting >= self.settings.max_queued:
            self.dropped += 1
            return defer.succeed(ExplainResult(error="too many plans queued; this one skipped"))
        self.waiting += 1

        def run() -> defer.Deferred[ExplainResult]:
            self.waiting -= 1
            return self._run(config, parameters, request)

        return self._slots.run(run)

    def _run(
        self, config: BackendConfig, parameters: dict[str, str], request: ExplainRequest
    ) -> defer.Deferred[ExplainResult]:
        wants_analyze = self.settings.analyze and request.read_only and request.kind == "select"
        try:
            _explain_messages(request, False)  # the client's Bind must decode
        except (ProtocolViolation, ValueError) as e:
            return defer.succeed(ExplainResult(error=f"cannot bind the parameters again: {e}"))
        side = dict(parameters, application_name="twinkly-explain")
        timeout_ms = max(1, int(self.settings.statement_timeout * 1000))
        analyzed = timed_out = False

        @defer.inlineCallbacks
        def exchange():  # type: ignore[no-untyped-def]
            nonlocal analyzed, timed_out
            backend = yield self._connect(config, side)

            def give_up() -> None:  # should the server not keep to statement_timeout
                nonlocal timed_out
                timed_out = True
                backend.transport.abortConnection()

            limit = self._clock.callLater(self.settings.statement_timeout + _MARGIN, give_up)
            try:
                if wants_analyze:  # before BEGIN: a failed look-up must not abort it
                    try:
                        analyzed = yield _plain_tables(backend, request.relations)
                    except BackendError:
                        analyzed = False
                yield _run(backend, encode(Query("BEGIN READ ONLY")))
                yield _run(backend, encode(Query(f"SET LOCAL statement_timeout = {timeout_ms}")))
                # The client's own session may hold locks: do not queue behind them.
                locks = min(timeout_ms, 1000)
                yield _run(backend, encode(Query(f"SET LOCAL lock_timeout = {locks}")))
                try:
                    rows = yield _run(backend, _explain_messages(request, analyzed))
                finally:
                    if backend.transport.connected and backend.idle:
                        yield backend.run_query("ROLLBACK")
            finally:
                if limit.active():
                    limit.cancel()
                backend.terminate()
            return rows

        def done(rows: list) -> ExplainResult:
            self.taken += 1
            text = "\n".join(str(row[0]) for row in rows if row and row[0] is not None)
            plan = parse_plan(text)
            if plan is None:
                return ExplainResult(error="the EXPLAIN output is not JSON")
            return ExplainResult(plan=plan, analyzed=analyzed)

        def failed(failure: Failure) -> ExplainResult:
            self.failed += 1
            if timed_out:
                limit = self.settings.statement_timeout + _MARGIN
                reason = f"no plan within {limit:g} s (Twinkly's own limit); connection dropped"
            elif failure.check(BackendError):
                reason = str(failure.value)
            else:
                reason = failure.getErrorMessage()
            log.info("EXPLAIN on {backend} failed: {reason}", backend=config.label, reason=reason)
            return ExplainResult(error=reason)

        return exchange().addCallbacks(done, failed)


def _run(backend: BackendProtocol, data: bytes) -> defer.Deferred:
    """backend.run_messages, failing at once on a connection already gone."""
    if not getattr(backend.transport, "connected", False):
        return defer.fail(BackendError(f"{backend.config.describe()}: connection lost"))
    return backend.run_messages(data)


@defer.inlineCallbacks
def _plain_tables(backend: BackendProtocol, relations: tuple[tuple[str, ...], ...]):  # type: ignore[no-untyped-def]
    """Whether running the statement can only read: every relation it reads is a plain
    table or materialized view without row security (a view or a policy could call any
    function), and no operator or cast outside pg_catalog is volatile (the SQL text names
    operators and casts, not the functions behind them; checked for the whole database,
    which is conservative). Names are quoted exactly as the statement wrote them; another
    database's table is refused."""
    if any(len(parts) > 2 for parts in relations):
        return False
    names = ", ".join(
        quote_literal(".".join(quote_identifier(p) for p in parts)) for parts in relations
    )
    rows = yield _run(backend, encode(Query(_SAFETY_CHECK.format(names=names or "NULL"))))
    return rows == [["0"]]


_SAFETY_CHECK = (
    "SELECT (SELECT count(*) FROM unnest(ARRAY[{names}]::text[]) AS r(name)"
    " LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(r.name)"
    " WHERE r.name IS NOT NULL"
    " AND (c.oid IS NULL OR c.relkind NOT IN ('r', 'm', 'p') OR c.relrowsecurity))"
    " + (SELECT count(*) FROM pg_catalog.pg_operator o"
    " JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode"
    " WHERE p.provolatile = 'v' AND o.oprnamespace <> 'pg_catalog'::pg_catalog.regnamespace)"
    " + (SELECT count(*) FROM pg_catalog.pg_cast k JOIN pg_catalog.pg_proc p ON p.oid = k.castfunc"
    " WHERE p.provolatile = 'v' AND p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace)"
)


def _explain_messages(request: ExplainRequest, analyze: bool) -> bytes:
    """The EXPLAIN of the statement, bound like the client's when it had a Bind."""
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
    sql = f"EXPLAIN ({options}) {request.sql}"
    if request.bind is None:
        return encode(Query(sql))
    bind = Bind.read(Reader(request.bind))
    return b"".join(
        (
            encode(Parse("", sql, request.parameter_types)),
            encode(Bind("", "", bind.parameter_formats, bind.parameters, ())),
            encode(Execute("", 0)),
            encode(Sync()),
        )
    )

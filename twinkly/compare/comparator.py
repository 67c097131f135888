"""One session's comparator: paired results in, verdicts and events out.

The order of the checks follows what matters most to a user: a statement that failed on
one database only (a write lost on the other) first, then different columns, different
command tags (``UPDATE 3`` vs ``UPDATE 2``), then the rows themselves. Rows are compared
by digest first; only results whose digests differ are decoded, normalised by type and
diffed, and only when both sides kept all their rows (``max_compared_rows``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from twinkly.compare.rows import Ordering, compare_columns, compare_rows
from twinkly.compare.shared_state import Monitor
from twinkly.compare.values import decode_columns
from twinkly.compare.volatile import learn, teaches
from twinkly.interfaces import IPairObserver, ISessionFacts, IVerdictListener
from twinkly.perf.latency import NOTHING
from twinkly.perf.timing import (
    TIMED,
    again_event,
    explain_request,
    fingerprint_of,
    history,
    remember,
    timings,
)
from twinkly.proxy.backend import SideConnection
from twinkly.report.describe import (
    bound_parameters,
    difference,
    statement_text,
    summary,
)
from twinkly.report.events import make_event
from twinkly.sql.analysis import StatementInfo
from twinkly.tracking.contexts import INTERNAL
from twinkly.tracking.responses import SYNC_SUB, StatementResult, SyncPoint

log = Logger()

_SUB_MASK = SYNC_SUB
MAX_ANALYZED_CHARS = 256 * 1024


@implementer(IPairObserver)
class Comparator:
    """Judges each pair of results of one session and writes an event per divergence."""

    def __init__(
        self,
        monitor: Monitor,
        facts: ISessionFacts | None,
        verdicts: IVerdictListener | None,
        clock: Callable[[], float],
    ) -> None:
        self.monitor = monitor
        self._facts = facts  # the session's id, settings and side connections
        self._verdicts = verdicts  # comparison.fail-on-differences / -slow-queries
        self.clock = clock
        self.last_event: dict | None = None
        self._in_transaction = False
        self._target_lost_transaction: str | None = None  # id of the event that caused it
        self._last_divergence: str | None = None
        self._truth_last_tag: bytes | None = None
        self._random = random.Random()

    @property
    def session_id(self) -> int | None:
        return self._facts.session_id if self._facts is not None else None

    # --- IPairObserver --------------------------------------------------------------

    def statements_paired(self, truth: StatementResult, target: StatementResult) -> None:
        if truth.context is INTERNAL:
            return  # Twinkly's own statement
        self._truth_last_tag = truth.tag
        monitor = self.monitor
        if monitor.settings.log_errors:
            self._log_error(truth, monitor.truth_label)
            self._log_error(target, monitor.target_label)
        if self._target_lost_transaction is not None:
            monitor.count("skipped")  # no cascade of 25P02 errors
            return
        settings = monitor.settings
        context = truth.context
        if settings.exclude_patterns and context is not None and settings.excluded(context[0]):
            monitor.count("excluded")
            return
        if settings.sample_rate < 1.0 and self._random.random() >= settings.sample_rate:
            monitor.count("sampled_out")
            return
        self._judge(truth, target)
        tag = truth.tag
        if (
            monitor.volatile is not None
            and tag is not None
            and truth.error is None
            and teaches(tag)
        ):
            learn(monitor.volatile, truth, target, lambda: self._info(truth), self._truth_side(),
                  self.session_id)  # fmt: skip
        if (
            truth.request in TIMED
            and settings.timing
            and truth.error is None
            and target.error is None
            and truth.timed
            and target.timed
        ):
            self._time(truth, target)

    def statement_unpaired(self, result: StatementResult, side: str) -> None:
        if result.context is INTERNAL:
            return
        if side == "truth":
            self._truth_last_tag = result.tag
        if self.monitor.settings.log_errors:
            label = self.monitor.truth_label if side == "truth" else self.monitor.target_label
            self._log_error(result, label)
        self.monitor.count("skipped")

    def _log_error(self, result: StatementResult, label: str) -> None:
        """monitoring.log-errors: every SQL error, from either backend."""
        if result.error is None:
            return
        sql = result.context[0] if result.context else None
        log.warn(
            "SQL error on {backend} (session {session}): {sqlstate} {message}; statement: {sql}",
            backend=label,
            session=self.session_id,
            sqlstate=result.sqlstate,
            message=result.error_message,
            sql=sql if not self.monitor.settings.redact else "<redacted>",
        )

    def sync_paired(self, truth: SyncPoint, target: SyncPoint) -> None:
        if truth.status == "T" and target.status == "E" and self._target_lost_transaction is None:
            self._target_lost_transaction = self._last_divergence or ""
        elif truth.status == "I" and self._target_lost_transaction is not None:
            if self._truth_last_tag == b"COMMIT":
                self._emit(
                    "transaction_divergence",
                    statement="COMMIT",
                    fingerprint=None,
                    truth=None,
                    target=None,
                    caused_by=self._target_lost_transaction or None,
                    reason="the target lost a transaction that the source of truth committed",
                )
            self._target_lost_transaction = None
        self._in_transaction = truth.status != "I"
        if self._verdicts is not None:
            self._verdicts.synced(truth)

    def truth_sync_alone(self, truth: SyncPoint) -> None:
        """The truth reached a ReadyForQuery the target never gave (a Sync it ignored)."""
        if self._verdicts is not None:
            self._verdicts.synced(truth)

    def pairing_abandoned(self, reason: str) -> None:
        log.warn(
            "session {session}: comparison stopped: {reason}",
            session=self.session_id,
            reason=reason,
        )
        self.monitor.count("dropped")

    # --- judging --------------------------------------------------------------------

    def _info(self, result: StatementResult) -> StatementInfo | None:
        context = result.context
        if context is None or len(context[0]) > MAX_ANALYZED_CHARS:
            return None  # parsing megabytes of SQL would stall every session
        infos = self.monitor.cache.get(context[0])
        if not infos:
            return None
        index = result.key & _SUB_MASK if result.request == "Q" else 0
        return infos[min(index, len(infos) - 1)]

    def _judge(self, truth: StatementResult, target: StatementResult) -> None:
        """The verdict on one pair. The SQL is parsed only when something differs: equal
        answers, the common case, cost no parsing at all."""
        monitor = self.monitor
        if truth.error is not None or target.error is not None:
            if truth.error is not None and target.error is not None:
                if truth.sqlstate == target.sqlstate:
                    monitor.count("matched")
                    return
                reason = "both failed, with different SQLSTATEs"
            else:
                failed = monitor.truth_label if truth.error is not None else monitor.target_label
                reason = f"only {failed} failed"
            info = self._info(truth)
            event = self._mismatch("error_divergence", truth, target, info, reason=reason)
            self._last_divergence = event["id"]
            if info is not None and info.writes:
                monitor.taint(info.writes, event["id"])
            return
        if truth.columns != target.columns and not truth.columns_described:
            problems = column_problems(truth.columns, target.columns)
            if problems:
                info = self._info(truth)
                self._mismatch("column_mismatch", truth, target, info, differences=list(problems))
                return
        if truth.columns is None and truth.tag != target.tag:
            info = self._info(truth)
            event = self._mismatch(
                "tag_mismatch", truth, target, info, reason="the command tags differ"
            )
            if info is not None and info.writes:
                self._last_divergence = event["id"]
                monitor.taint(info.writes, event["id"])
            return
        if truth.rows == target.rows and truth.digest == target.digest:
            monitor.outcomes["matched"] += 1  # monitor.count("matched"), for every statement
            return
        self._judge_rows(truth, target, self._info(truth))

    def _judge_rows(
        self, truth: StatementResult, target: StatementResult, info: StatementInfo | None
    ) -> None:
        monitor = self.monitor
        settings = monitor.settings
        differences: list = []
        note = ""
        differing = abs(truth.rows - target.rows)
        complete = truth.sample is not None and target.sample is not None
        if complete and truth.columns is not None:
            columns = decode_columns(truth.columns)
            ordering = Ordering(
                ordered=bool(info and info.ordered),
                order_columns=info.order_columns if info else None,
                limited=bool(info and (info.limited or info.distinct_on)),
            )
            verdict = compare_rows(
                columns,
                truth.sample,  # type: ignore[arg-type]
                decode_columns(target.columns or b"\0\0"),
                target.sample,  # type: ignore[arg-type]
                ordering,
                settings.rules,
                settings.max_sample_rows,
            )
            if verdict.equal:
                monitor.count("matched")  # equal once normalised by type
                return
            differences = [difference(d) for d in verdict.differences]
            differing = verdict.differing_rows
            if verdict.nondeterministic:
                self._benign(
                    "nondeterministic", truth, target, info, verdict.nondeterministic, differences
                )
                return
            judged = self._volatile(truth, target, columns, ordering, verdict, info)
            if judged is not None and judged.comparison is None:
                self._benign(
                    judged.kind, truth, target, info, judged.reason, differences,
                    caused_by=judged.caused_by,
                )  # fmt: skip
                return
            if judged is not None and judged.comparison is not None:
                differences = [difference(d) for d in judged.comparison.differences]
                differing, note = judged.comparison.differing_rows, f" ({judged.reason})"
        noise = _noise_reason(info)
        if noise is not None:
            self._benign("noise", truth, target, info, noise, differences)
            return
        reason = f"{differing} rows differ" if differing else "the rows differ"
        reason += note
        if not complete:
            reason += (
                f" (result larger than {settings.max_compared_rows} rows:"
                " compared by count and digest only)"
            )
        self._mismatch(
            "result_mismatch", truth, target, info, differences=differences, reason=reason
        )

    def _truth_side(self) -> SideConnection | None:
        """How to reach the truth as this session did (the catalog's side connection)."""
        sides = self._facts.side_connections() if self._facts is not None else None
        return sides[0] if sides else None

    def _volatile(self, truth, target, columns, ordering, verdict, info):  # type: ignore[no-untyped-def]
        """The write history's verdict on differing rows (twinkly.compare.volatile)."""
        volatile = self.monitor.volatile
        if volatile is None:
            return None
        side = self._truth_side()
        return volatile.judge(
            side.parameters.get("database") if side is not None else None,
            columns,
            truth.sample,
            decode_columns(target.columns or b"\0\0"),
            target.sample,
            ordering,
            verdict,
            info.reads if info is not None else (),
            self.monitor.settings.rules,
            self.monitor.settings.max_sample_rows,
            self.session_id,
        )

    # --- timing ---------------------------------------------------------------------

    def _time(self, truth: StatementResult, target: StatementResult) -> None:
        """Both live executions' times into the fingerprint's histograms; a slow_query
        or fingerprint_regression event when they call for one."""
        fingerprint = fingerprint_of(truth)
        if fingerprint is None:
            return
        monitor = self.monitor
        book = monitor.latency
        statement = ""
        if fingerprint not in book.entries:
            statement = statement_text(self._info(truth), truth, monitor.settings.redact)
        verdict = book.record(fingerprint, statement, truth.elapsed, target.elapsed, self.clock())
        failing = (
            monitor.settings.fail_on_slow_queries
            and self._verdicts is not None
            and book.settings.slower(truth.elapsed, target.elapsed)
        )
        if verdict is NOTHING and not failing:
            return
        entry = book.get(fingerprint)
        if verdict.regression is not None and entry is not None:
            monitor.slow.regression(entry, verdict.regression, self.session_id)
        if verdict.slow:
            written = self._slow(truth, target, fingerprint, verdict.suppressed)
        elif failing:
            # Rate-limited (or not reported): the client still gets TW003, with the
            # plans of the last event written for this fingerprint.
            written = defer.succeed(again_event(truth, target, entry, self._labels))
        else:
            return
        if failing:
            provisional = again_event(truth, target, entry, self._labels)
            self._verdicts.slow(written, provisional)  # type: ignore[union-attr]

    def _slow(
        self, truth: StatementResult, target: StatementResult, fingerprint: str, suppressed: int
    ) -> defer.Deferred[dict]:
        monitor = self.monitor
        info = self._info(truth)
        parameters, formats = bound_parameters(truth)
        fields = {
            "session": self.session_id,
            "in_transaction": self._in_transaction,
            "statement": statement_text(info, truth, monitor.settings.redact),
            "fingerprint": fingerprint,
            **timings(truth, target, self._labels),
            "suppressed": suppressed,
            "history": history(monitor.latency.get(fingerprint), monitor.latency.settings),
            "parameters": None if monitor.settings.redact else parameters,
            "parameter_formats": formats,
        }
        if self._verdicts is not None:
            fields["held"] = self._verdicts.holding
        written = monitor.slow.slow_query(
            fields,
            self._facts.side_connections() if self._facts is not None else None,
            explain_request(truth, info),
            info.redacted if info is not None else None,
        )
        return written.addCallback(self._slow_written)

    def _slow_written(self, event: dict) -> dict:
        self.last_event = event
        remember(self.monitor.latency.get(event["fingerprint"]), event)
        return event

    @property
    def _labels(self) -> tuple[str, str]:
        return self.monitor.truth_label, self.monitor.target_label

    # --- events ---------------------------------------------------------------------

    def _benign(
        self, kind: str, truth, target, info, reason: str, differences: list, **fields: object
    ) -> None:
        self.monitor.count(kind)
        if self.monitor.settings.log_differences_only:
            self.monitor.events[kind] += 1
            return
        self._event(kind, truth, target, info, reason=reason, differences=differences, **fields)

    def _mismatch(self, kind: str, truth, target, info, **fields: object) -> dict:
        one_sided = kind == "error_divergence" and (truth.error is None or target.error is None)
        self.monitor.count("one_sided_error" if one_sided else "mismatched")
        caused_by = self.monitor.cause_of(info.reads) if info is not None else None
        if self._verdicts is not None:
            fields["held"] = self._verdicts.holding
        event = self._event(kind, truth, target, info, caused_by=caused_by, **fields)
        if self._verdicts is not None:
            self._verdicts.mismatch(event)
        return event

    def _event(self, kind: str, truth, target, info, **fields: object) -> dict:
        monitor = self.monitor
        parameters, formats = bound_parameters(truth)
        return self._emit(
            kind,
            statement=statement_text(info, truth, monitor.settings.redact),
            fingerprint=info.fingerprint if info is not None else None,
            truth=summary(truth, monitor.truth_label),
            target=summary(target, monitor.target_label),
            parameters=None if monitor.settings.redact else parameters,
            parameter_formats=formats,
            parameter_types=list(truth.context[2]) if truth.context else None,
            settings=self._facts.truth_settings() if self._facts is not None else None,
            **fields,
        )

    def _emit(self, kind: str, **fields: object) -> dict:
        event = make_event(
            kind,
            now=self.clock(),
            session=self.session_id,
            in_transaction=self._in_transaction,
            **fields,  # type: ignore[arg-type]
        )
        self.monitor.emit(event)
        self.last_event = event
        return event


@lru_cache(maxsize=1024)
def column_problems(truth: bytes | None, target: bytes | None) -> tuple[str, ...]:
    """Column differences of two RowDescriptions; cached, since their bytes always differ
    (table OIDs are per server) while the shapes repeat."""
    return tuple(
        compare_columns(decode_columns(truth or b"\0\0"), decode_columns(target or b"\0\0"))
    )


def _noise_reason(info: StatementInfo | None) -> str | None:
    if info is None:
        return None
    if info.volatile:
        return "calls volatile functions: " + ", ".join(info.volatile)
    if info.server_identity:
        return "reads server identity: " + ", ".join(info.server_identity)
    return None

"""Columns whose values each server generated for itself, and the noise rule for them.

``insert into t (id, v) values (1, 'a')`` into a table with ``ts timestamptz default
now()`` stores a different ``ts`` on each server, and every later read of ``ts`` differs
forever. Twinkly keeps a write history: which columns of which tables were given values
computed on each server separately, learnt from the write statement's parse tree
(``twinkly.sql.writes``), from the catalog (``twinkly.compare.catalog``: volatile
defaults, identity and serial keys, generated columns over them), or by observation (a
table with a BEFORE row trigger whose later reads differ in one column the trigger names).
The first time a column enters the history a ``volatile_write`` event says so; later
results whose differences are confined to such columns are ``noise`` pointing at it.

The rows are compared again with those columns ignored (any two non-NULL values equal):
a difference anywhere else in the same rows is still a ``result_mismatch``, naming only
the columns that really differ. A sequence-generated key (serial, identity, nextval) is
numbered in a different order on each server under concurrent inserts, so rows are then
matched on their other columns, and the ORDER BY on that key is not held against them.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twinkly.compare.catalog import CatalogReader, TableFacts
from twinkly.compare.generated import (
    CONFIGURED,
    DEFAULT,
    KEY,
    TRIGGER,
    Source,
    generated_by,
)
from twinkly.compare.rows import VALUE, Comparison, Ordering, compare_rows
from twinkly.compare.values import DEFAULT_RULES, NormalizationRules
from twinkly.proxy.backend import SideConnection
from twinkly.report.events import make_event
from twinkly.sql.analysis import VOLATILE_FUNCTIONS
from twinkly.sql.writes import WriteFacts
from twinkly.wire.backend import Column

MAX_TABLES = 10_000  # tables with a write history (oldest go first)
MAX_WAITING = 64  # distinct writes per table remembered while its catalog is being read
Database = str | None


@dataclass(frozen=True, slots=True)
class Judgement:
    kind: str  # noise, nondeterministic or result_mismatch
    reason: str
    caused_by: str | None = None
    comparison: Comparison | None = None  # result_mismatch: the rows compared again


Emit = Callable[[dict], object]


class VolatileColumns:
    """The write history shared by every session, and the rule that reads it."""

    def __init__(
        self,
        catalog: CatalogReader | None,
        emit: Emit,
        clock: Callable[[], float],
        auto: bool = True,
        configured: Iterable[str] = (),
        redact: bool = False,
    ) -> None:
        self.catalog = catalog if auto else None
        self.auto = auto
        self._emit = emit
        self._clock = clock
        self.redact = redact
        self.configured = frozenset(_split(name) for name in configured)
        # (database, table OID on the truth) -> attnum -> Source
        self.sources: OrderedDict[tuple[Database, int], dict[int, Source]] = OrderedDict()
        self._waiting: dict[tuple[Database, str], set[WriteFacts]] = {}

    # --- learning: writes, DDL, observation ---------------------------------------------

    def plain(self, side: SideConnection, tables: Iterable[str]) -> bool:
        """Every table is known to the catalog and has nothing a server generates."""
        catalog = self.catalog
        if catalog is None:
            return True
        database = _database(side)
        for table in tables:
            if not catalog.known(database, table):
                return False
            facts = catalog.cached(database, table)
            if facts is not None and (
                facts.triggers or any(c.volatile or c.generated for c in facts.columns)
            ):
                return False
        return True

    def wrote(
        self,
        writes: Sequence[WriteFacts],
        side: SideConnection | None,
        statement: str,
        fingerprint: str | None,
        session: int | None,
    ) -> None:
        """A write both servers ran alike (same command tag): learn what it generated."""
        catalog = self.catalog
        if catalog is None or side is None:
            return
        database = _database(side)
        context = (statement, fingerprint, session)
        for facts in writes:
            if catalog.known(database, facts.table):
                self._resolve(database, facts, catalog.cached(database, facts.table), context)
                continue
            key = (database, facts.table)
            waiting = self._waiting.get(key)
            if waiting is not None:
                if len(waiting) < MAX_WAITING:
                    waiting.add(facts)
                continue
            self._waiting[key] = {facts}

            def read(table: TableFacts | None, key: tuple = key) -> None:
                for waited in self._waiting.pop(key, ()):
                    self._resolve(key[0], waited, table, context)

            catalog.table(side, facts.table, facts.relation).addCallback(read)

    def ddl(self, tables: Iterable[str], side: SideConnection | None) -> None:
        """DDL changed these tables: read their catalog again; a column added with a
        volatile default was filled in on each server separately."""
        catalog = self.catalog
        if catalog is None or side is None:
            return
        database = _database(side)
        for table in tables:
            before = catalog.cached(database, table)
            if before is None:
                catalog.forget(database, table)
                continue
            catalog.forget(database, table)
            relation = tuple(table.split("."))

            def read(after: TableFacts | None, before: TableFacts = before) -> None:
                if after is None:
                    return
                old = {c.name for c in before.columns}
                added = {
                    c.number: Source(
                        after.name, c.name, f"{c.how}, filled in by ALTER TABLE", DEFAULT
                    )
                    for c in after.columns
                    if c.volatile and c.name not in old
                }
                if added:
                    self._record(database, after, added, ("ALTER TABLE", None, None))

            catalog.table(side, table, relation).addCallback(read)

    def _resolve(
        self, database: Database, facts: WriteFacts, table: TableFacts | None, context: tuple
    ) -> None:
        if table is None:
            return
        found = generated_by(facts, table, self.sources.get((database, table.oid), {}))
        if found:
            self._record(database, table, found, context)

    def _record(
        self, database: Database, table: TableFacts, found: dict[int, Source], context: tuple
    ) -> None:
        """Add what is new to the history, with one volatile_write event saying so."""
        key = (database, table.oid)
        known = self.sources.get(key)
        if known is None:
            known = self.sources[key] = {}
            while len(self.sources) > MAX_TABLES:
                self.sources.popitem(last=False)
        new = {n: s for n, s in found.items() if n not in known}
        if not new:
            return
        statement, fingerprint, session = context
        reason = "; ".join(s.reason(cited=False) for s in new.values())
        event = make_event(
            "volatile_write",
            now=self._clock(),
            session=session,
            statement=statement,
            fingerprint=fingerprint,
            truth=None,
            target=None,
            reason=reason,
            columns=[
                {"table": s.table, "column": s.column, "how": s.how, "kind": s.kind}
                for s in new.values()
            ],
        )
        self._emit(event)
        for number, source in new.items():
            known[number] = Source(
                source.table, source.column, source.how, source.kind, event["id"]
            )

    def observe(
        self,
        database: Database,
        columns: Sequence[Column],
        comparison: Comparison,
        session: int | None,
    ) -> dict[int, Source]:
        """A read whose differences are all in one column of a table with a BEFORE row
        trigger naming that column (or in C, naming nothing): the trigger set it on each
        server separately. Both values must be there (NULL against a value is real)."""
        if self.catalog is None or not comparison.differences:
            return {}
        names = {d.columns for d in comparison.differences}
        if len(names) != 1 or any(d.kind != VALUE for d in comparison.differences):
            return {}
        (differing,) = names
        if len(differing) != 1:
            return {}
        name = differing[0]
        index = next((k for k, c in enumerate(columns) if c.name == name and c.table_oid), None)
        if index is None:
            return {}
        for d in comparison.differences:
            if _at(d.truth, index) is None or _at(d.target, index) is None:
                return {}
        column = columns[index]
        table = self.catalog.by_oid(database, column.table_oid)
        facts = table.by_number(column.column_number) if table is not None else None
        if table is None or facts is None:
            return {}
        triggers = [t for t in table.triggers if facts.name in t.columns] or [
            t for t in table.triggers if not t.columns
        ]
        if not triggers:
            return {}
        how = "set by trigger " + ", ".join(f"{t.name} ({t.function}())" for t in triggers)
        return {index: Source(table.name, facts.name, how, TRIGGER)}

    def _observed(
        self, database: Database, columns: Sequence[Column], sources: dict[int, Source],
        session: int | None,
    ) -> dict[int, Source]:  # fmt: skip
        """Record what observation found (once confirmed on every row), with its event."""
        ((index, source),) = sources.items()
        column = columns[index]
        table = self.catalog.by_oid(database, column.table_oid) if self.catalog else None
        if table is None:
            return sources
        self._record(database, table, {column.column_number: source}, (None, None, session))
        return {index: self.sources[(database, table.oid)][column.column_number]}

    # --- reading ------------------------------------------------------------------------

    def sources_for(
        self, database: Database, columns: Sequence[Column], reads: Iterable[str] = ()
    ) -> dict[int, Source]:
        """The output columns (by index) whose values were generated on each server."""
        found: dict[int, Source] = {}
        catalog = self.catalog
        for k, column in enumerate(columns):
            if not column.table_oid:
                continue
            source = self.sources.get((database, column.table_oid), {}).get(column.column_number)
            if source is not None:
                found[k] = source
        if self.configured:
            tables = {_split(t + ".x")[0] for t in reads}
            for k, column in enumerate(columns):
                if k in found or not column.table_oid:
                    continue
                table = catalog.by_oid(database, column.table_oid) if catalog else None
                facts = table.by_number(column.column_number) if table else None
                if table is not None and facts is not None:
                    names = [(_split(table.name + ".x")[0], facts.name.lower())]
                else:  # no catalog: by the output name, among the tables read
                    names = [(t, column.name.lower()) for t in tables]
                for name in names:
                    if name in self.configured:
                        found[k] = Source(name[0], name[1], "configured", CONFIGURED)
                        break
        return found

    def judge(
        self,
        database: Database,
        columns_truth: Sequence[Column],
        rows_truth: list[bytes],
        columns_target: Sequence[Column],
        rows_target: list[bytes],
        ordering: Ordering,
        verdict: Comparison,
        reads: Iterable[str] = (),
        rules: NormalizationRules = DEFAULT_RULES,
        max_differences: int = 20,
        session: int | None = None,
    ) -> Judgement | None:
        """The verdict on rows that differ, given the write history; None when the
        history does not bear on them."""
        sources = self.sources_for(database, columns_truth, reads)
        observed = False
        if not sources and self.auto:
            sources = self.observe(database, columns_truth, verdict, session)
            observed = bool(sources)
        if not sources:
            return None
        rows = (columns_truth, rows_truth, columns_target, rows_target)
        judged = judge_rows(sources, *rows, ordering, verdict, rules, max_differences)
        if not observed:
            return judged
        if judged.kind != "noise":
            return None  # the trigger's column is not the only difference in every row
        sources = self._observed(database, columns_truth, sources, session)
        return judge_rows(sources, *rows, ordering, verdict, rules, max_differences)


def judge_rows(
    sources: dict[int, Source],
    columns_truth: Sequence[Column],
    rows_truth: list[bytes],
    columns_target: Sequence[Column],
    rows_target: list[bytes],
    ordering: Ordering,
    verdict: Comparison,
    rules: NormalizationRules = DEFAULT_RULES,
    max_differences: int = 20,
) -> Judgement:
    """Compare the rows again with the generated columns ignored: noise when nothing
    else differs, else a mismatch naming only the columns that really differ."""
    ignored = frozenset(sources)
    keys = ignored & {k for k, s in sources.items() if s.kind == KEY}
    order = ordering
    if ordering.ordered and (
        ordering.order_columns is None or ignored & set(ordering.order_columns)
    ):
        # Sorted by generated values: the order itself was generated on each server.
        order = Ordering(ordered=False, order_columns=(), limited=ordering.limited)
    again = compare_rows(
        columns_truth,
        rows_truth,
        columns_target,
        rows_target,
        order,
        rules,
        max_differences,
        ignored=ignored,
    )
    differing = {name for d in verdict.differences for name in d.columns}
    named = [s for k, s in sorted(sources.items()) if columns_truth[k].name in differing]
    shown = list(dict.fromkeys(named or [sources[k] for k in sorted(keys or sources)]))
    reason = "; ".join(s.reason() for s in shown)
    caused_by = next((s.event for s in shown if s.event), None)
    if again.equal:
        return Judgement("noise", reason, caused_by)
    if again.nondeterministic:
        return Judgement("nondeterministic", f"{again.nondeterministic}; {reason}", caused_by)
    apart = ", ".join(s.name for s in dict.fromkeys(sources.values()))
    note = f"{apart} compared apart, generated on each server separately"
    if keys:
        note += "; rows matched on their other columns"
    return Judgement("result_mismatch", note, None, again)


def _database(side: SideConnection) -> Database:
    return side.parameters.get("database") or getattr(side.config, "database", None)


def _split(name: str) -> tuple[str, str]:
    """``schema.table.column`` or ``table.column`` -> (table as written, column), lower-case;
    a table in the public schema matches either way."""
    table, _, column = name.lower().rpartition(".")
    return table.removeprefix("public."), column


def _at(row: Any, index: int) -> Any:
    return row[index] if row is not None and index < len(row) else None


# --- what the comparator calls ----------------------------------------------------------

_WRITE_TAGS = frozenset((b"INSERT", b"UPDATE", b"MERGE", b"COPY"))
# The table a plain write names first, read without parsing (a cheap first look).
_WRITE_TARGET = re.compile(
    r"\s*(?:insert\s+into|update|merge\s+into|copy)\s+(?:only\s+)?([a-z_][a-z0-9_$]*"
    r"(?:\.[a-z_][a-z0-9_$]*)?)\s*[\s(;]",
    re.IGNORECASE,
)
# Every volatile function's name and the 'now'-like literals, as words: a write without
# any of them computes nothing itself (analysis.VOLATILE_FUNCTIONS).
_HINT_WORDS = "|".join(sorted(VOLATILE_FUNCTIONS | {"today", "tomorrow", "yesterday"}))
_VOLATILE_HINTS = re.compile(rf"\b(?:{_HINT_WORDS})\b", re.IGNORECASE)
_DDL_TAGS = frozenset((b"ALTER", b"CREATE", b"DROP"))
_TEACHING_TAGS = _WRITE_TAGS | _DDL_TAGS


def teaches(tag: bytes | None) -> bool:
    """Whether a result with this command tag can teach the write history (a write or
    DDL): asked for every statement, so a read costs one prefix check."""
    if not tag or tag.startswith(b"SELECT"):
        return False
    return tag.split(b" ", 1)[0] in _TEACHING_TAGS


def learn(
    volatile: VolatileColumns,
    truth: Any,
    target: Any,
    info: Callable[[], Any],
    side: SideConnection | None,
    session: int | None,
) -> None:
    """After a pair of results: a write both ran alike, or DDL, teaches the history.
    The SQL is read only for writes, and not at all for tables known to have nothing
    generated (the catalog said so) written without volatile functions."""
    if volatile.catalog is None or side is None or truth.error is not None:
        return
    tag = truth.tag or b""
    verb = tag.split(b" ", 1)[0]
    if verb in _WRITE_TAGS:
        if tag != target.tag or tag.endswith(b" 0") or target.error is not None:
            return  # nothing written, or written differently (that is a tag_mismatch)
        sql = truth.context[0] if truth.context else ""
        named = _WRITE_TARGET.match(sql)
        plain = (
            named is not None
            and ";" not in sql.rstrip().rstrip(";")  # one statement only
            and not _VOLATILE_HINTS.search(sql)
        )
        if plain and volatile.plain(side, (named[1].lower(),)):  # type: ignore[index]
            return  # a known table with nothing generated: no parsing at all
        statement = info()
        if statement is None or not statement.writes:
            return
        if not statement.volatile and volatile.plain(side, statement.writes):
            return
        from twinkly.sql.writes import write_facts

        writes = write_facts(statement.sql)
        if writes:
            shown = statement.redacted if volatile.redact else statement.sql
            volatile.wrote(writes, side, shown, statement.fingerprint, session)
    elif verb in _DDL_TAGS:
        statement = info()
        if statement is not None and statement.kind == "ddl" and statement.writes:
            volatile.ddl(statement.writes, side)

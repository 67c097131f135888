"""Which columns of a table get values each server computes for itself, from the catalog.

Read once per table on a side connection to the source of truth that logs in like the
session did (as EXPLAIN's do, see ``twinkly.perf.explain``), and again after DDL on it:
column defaults calling volatile functions (``now()``, ``gen_random_uuid()``,
``nextval()`` of a serial column, or a user function declared VOLATILE), identity
columns, stored generated columns and the columns they are computed from, and the row
triggers that run before INSERT or UPDATE (whose effects only show later, when a read
differs; see ``twinkly.compare.volatile``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twinkly.config.schema import BackendConfig
from twinkly.proxy.backend import SideConnection
from twinkly.sql.analysis import analyze
from twinkly.sql.quoting import quote_identifier, quote_literal

log = Logger()

MAX_TABLES = 10_000  # tables whose facts are kept (least recently read go first)
TIMEOUT = 5.0  # seconds for one look-up, connection included


@dataclass(frozen=True, slots=True)
class ColumnFacts:
    name: str
    number: int  # attnum
    default: str | None = None  # pg_get_expr of the default (or generation) expression
    volatile: bool = False  # the default calls a volatile function
    sequence: bool = False  # serial or identity: a key the server numbers itself
    identity: str = ""  # "a" (always), "d" (by default) or ""
    generated: bool = False  # a stored generated column
    depends_on: tuple[int, ...] = ()  # generated: the columns (attnum) it is computed from

    @property
    def how(self) -> str:
        """The generating expression, as a reason shows it."""
        if self.identity:
            kind = "always" if self.identity == "a" else "by default"
            return f"generated {kind} as identity"
        if self.generated:
            return f"generated always as ({self.default})"
        return f"default {self.default}"


@dataclass(frozen=True, slots=True)
class TriggerFacts:
    name: str
    function: str
    source: str  # prosrc: PL/pgSQL text, or a C symbol
    columns: tuple[str, ...]  # columns of the table the source names (NEW.x, x :=)


@dataclass(frozen=True, slots=True)
class TableFacts:
    oid: int  # on the source of truth
    name: str  # as the write named it, lower-case
    columns: tuple[ColumnFacts, ...]
    triggers: tuple[TriggerFacts, ...] = ()

    def column(self, name: str) -> ColumnFacts | None:
        if name.startswith("#"):  # an INSERT without a column list: by position
            position = int(name[1:]) - 1
            return self.columns[position] if 0 <= position < len(self.columns) else None
        for column in self.columns:
            if column.name == name:
                return column
        return None

    def by_number(self, number: int) -> ColumnFacts | None:
        for column in self.columns:
            if column.number == number:
                return column
        return None


Connect = Callable[[BackendConfig, dict[str, str]], defer.Deferred]


class CatalogReader:
    """Table facts from the truth's catalog, cached per (database, table) and by OID."""

    def __init__(self, connect: Connect, clock: IReactorTime, timeout: float = TIMEOUT) -> None:
        self._connect = connect
        self._clock = clock
        self.timeout = timeout
        self._tables: OrderedDict[tuple[str | None, str], TableFacts | None] = OrderedDict()
        self._oids: dict[tuple[str | None, int], TableFacts] = {}
        self._pending: dict[tuple[str | None, str], defer.Deferred] = {}
        self.reads = 0
        self.failed = 0

    def cached(self, database: str | None, table: str) -> TableFacts | None:
        return self._tables.get((database, table))

    def known(self, database: str | None, table: str) -> bool:
        return (database, table) in self._tables

    def by_oid(self, database: str | None, oid: int) -> TableFacts | None:
        return self._oids.get((database, oid))

    def forget(self, database: str | None, table: str) -> None:
        """After DDL on the table: the next look-up reads the catalog again."""
        facts = self._tables.pop((database, table), None)
        if facts is not None:
            self._oids.pop((database, facts.oid), None)

    def table(
        self, side: SideConnection, table: str, relation: tuple[str, ...]
    ) -> defer.Deferred[TableFacts | None]:
        """The table's facts (None: no such table, or the look-up failed); never errbacks.
        Concurrent look-ups of one table share one side connection."""
        database = side.parameters.get("database")
        key = (database, table)
        if key in self._tables:
            self._tables.move_to_end(key)
            return defer.succeed(self._tables[key])
        waiting = self._pending.get(key)
        if waiting is None:
            waiting = self._pending[key] = self._read(side, table, relation)
            waiting.addBoth(self._store, key)
        result: defer.Deferred[TableFacts | None] = defer.Deferred()

        def share(facts: TableFacts | None) -> TableFacts | None:
            result.callback(facts)
            return facts

        waiting.addCallback(share)
        return result

    def _store(self, facts: TableFacts | None, key: tuple[str | None, str]) -> TableFacts | None:
        del self._pending[key]
        self._tables[key] = facts
        if facts is not None:
            self._oids[(key[0], facts.oid)] = facts
        while len(self._tables) > MAX_TABLES:
            (database, _), old = self._tables.popitem(last=False)
            if old is not None:
                self._oids.pop((database, old.oid), None)
        return facts

    def _read(
        self, side: SideConnection, table: str, relation: tuple[str, ...]
    ) -> defer.Deferred[TableFacts | None]:
        if not relation or len(relation) > 2:
            return defer.succeed(None)
        name = quote_literal(".".join(quote_identifier(p) for p in relation))
        parameters = dict(side.parameters, application_name="twinkly-catalog")
        timed_out = False

        @defer.inlineCallbacks
        def exchange():  # type: ignore[no-untyped-def]
            nonlocal timed_out
            backend = yield self._connect(side.config, parameters)

            def give_up() -> None:
                nonlocal timed_out
                timed_out = True
                backend.transport.abortConnection()

            limit = self._clock.callLater(self.timeout, give_up)
            try:
                ms = max(1, int(self.timeout * 1000))
                yield backend.run_query(f"SET statement_timeout = {ms}")
                columns = yield backend.run_query(_COLUMNS.format(name=name))
                triggers = yield backend.run_query(_TRIGGERS.format(name=name))
            finally:
                if limit.active():
                    limit.cancel()
                backend.terminate()
            return _facts(table, columns, triggers)

        def failed(failure: Failure) -> None:
            self.failed += 1
            reason = "timed out" if timed_out else failure.getErrorMessage()
            log.info("catalog look-up of {table} failed: {reason}", table=table, reason=reason)
            return None

        self.reads += 1
        return exchange().addErrback(failed)


def _facts(table: str, columns: list[list], triggers: list[list]) -> TableFacts | None:
    if not columns:
        return None
    found = []
    for _oid, number, name, default, identity, generated, user_volatile, depends in columns:
        calls = _volatile_calls(default) if default else ()
        volatile = bool(calls or user_volatile or identity)
        found.append(
            ColumnFacts(
                name=name,
                number=int(number),
                default=default,
                volatile=volatile and not generated,
                sequence=bool(identity) or "nextval" in calls,
                identity=identity or "",
                generated=generated == "s",
                depends_on=tuple(int(d) for d in (depends or "").split(",") if d),
            )
        )
    names = {c.name.lower(): c.name for c in found}
    kept = []
    for trigger_name, function, source in triggers:
        words = _identifiers(source or "")
        kept.append(
            TriggerFacts(
                trigger_name,
                function,
                source or "",
                tuple(names[w] for w in names if w in words),
            )
        )
    return TableFacts(int(columns[0][0]), table, tuple(found), tuple(kept))


def _volatile_calls(expression: str) -> tuple[str, ...]:
    (info,) = analyze(f"SELECT {expression}")[:1]
    return info.volatile


def _identifiers(source: str) -> frozenset[str]:
    word = []
    found = set()
    for ch in source.lower() + " ":
        if ch.isalnum() or ch == "_":
            word.append(ch)
        elif word:
            found.add("".join(word))
            word = []
    return frozenset(found)


_COLUMNS = (
    "SELECT c.oid, a.attnum, a.attname, pg_catalog.pg_get_expr(d.adbin, d.adrelid),"
    " a.attidentity, a.attgenerated,"
    " (SELECT string_agg(p.proname, ',') FROM pg_catalog.pg_depend dp"
    " JOIN pg_catalog.pg_proc p ON p.oid = dp.refobjid"
    " WHERE dp.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND dp.objid = d.oid"
    " AND dp.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.provolatile = 'v'),"
    " (SELECT string_agg(dp.refobjsubid::text, ',') FROM pg_catalog.pg_depend dp"
    " WHERE dp.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND dp.objid = d.oid"
    " AND dp.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass"
    " AND dp.refobjid = c.oid AND dp.refobjsubid > 0)"
    " FROM pg_catalog.pg_class c"
    " JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0"
    " AND NOT a.attisdropped"
    " LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum"
    " WHERE c.oid = pg_catalog.to_regclass({name}) ORDER BY a.attnum"
)
# Row triggers (tgtype bit 1) running BEFORE (2) INSERT (4) or UPDATE (16), enabled.
_TRIGGERS = (
    "SELECT t.tgname, p.proname, p.prosrc FROM pg_catalog.pg_trigger t"
    " JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid"
    " WHERE t.tgrelid = pg_catalog.to_regclass({name}) AND NOT t.tgisinternal"
    " AND t.tgenabled <> 'D' AND (t.tgtype & 3) = 3 AND (t.tgtype & 20) <> 0"
    " ORDER BY t.tgname"
)

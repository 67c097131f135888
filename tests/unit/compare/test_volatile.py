"""twinkly.compare.volatile and twinkly.compare.catalog: the write history, learnt from
writes and the catalog (read through a fake side connection), and the noise rule."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twinkly.compare.catalog import CatalogReader
from twinkly.compare.generated import generated_by
from twinkly.compare.rows import Ordering, compare_rows
from twinkly.compare.volatile import VolatileColumns, learn, teaches
from twinkly.config.schema import BackendConfig
from twinkly.proxy.backend import SideConnection
from twinkly.sql.analysis import analyze
from twinkly.sql.writes import write_facts
from twinkly.wire.backend import Column, DataRow

OID = 16400
INT4, TEXT, TIMESTAMPTZ = 23, 25, 1184
# oid, attnum, attname, default, identity, generated, user volatile functions, depends on
T_COLUMNS = [
    [str(OID), "1", "id", None, "", "", None, None],
    [str(OID), "2", "v", None, "", "", None, None],
    [str(OID), "3", "ts", "now()", "", "", None, None],
    [str(OID), "4", "day", "(ts + '1 day'::interval)", "", "s", None, "3"],
]
K_COLUMNS = [
    [str(OID + 1), "1", "id", "nextval('k_id_seq'::regclass)", "", "", None, None],
    [str(OID + 1), "2", "who", None, "", "", None, None],
    [str(OID + 1), "3", "n", None, "", "", None, None],
]
S_COLUMNS = [  # a trigger stamps "stamped"
    [str(OID + 2), "1", "id", None, "", "", None, None],
    [str(OID + 2), "2", "v", None, "", "", None, None],
    [str(OID + 2), "3", "stamped", None, "", "", None, None],
]
S_TRIGGERS = [["stamp", "stamp_rows", "begin new.stamped := clock_timestamp(); return new; end"]]
TABLES = {'"t"': (T_COLUMNS, []), '"k"': (K_COLUMNS, []), '"s"': (S_COLUMNS, S_TRIGGERS)}


class FakeBackend:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.transport = SimpleNamespace(abortConnection=lambda: None)
        self.terminated = False

    def run_query(self, sql: str) -> defer.Deferred:
        self.log.append(sql)
        for name, (columns, triggers) in TABLES.items():
            if name in sql:
                return defer.succeed(triggers if "pg_trigger" in sql else columns)
        return defer.succeed([])

    def terminate(self) -> None:
        self.terminated = True


class Harness:
    def __init__(self, auto: bool = True, configured: tuple[str, ...] = ()) -> None:
        self.queries: list[str] = []
        self.connections = 0
        self.held: list[defer.Deferred] = []
        self.hold = False
        self.clock = Clock()
        self.events: list[dict] = []
        self.catalog = CatalogReader(self._connect, self.clock)
        self.volatile = VolatileColumns(
            self.catalog, self.events.append, lambda: 1_800_000_000.0, auto, configured
        )
        self.side = SideConnection(BackendConfig("postgresql", label="pg15"), {"database": "app"})

    def _connect(self, config: object, parameters: dict) -> defer.Deferred:
        self.connections += 1
        d = defer.Deferred()
        if self.hold:
            self.held.append(d)
        else:
            d.callback(FakeBackend(self.queries))
        return d

    def write(self, sql: str, tag: bytes = b"INSERT 0 1") -> int:
        """Learn from one write; how many times its SQL had to be analyzed."""
        info = analyze(sql)[-1]  # of a multi-statement text: its last statement's
        result = SimpleNamespace(tag=tag, error=None, context=(sql, None, ()))
        parsed = []
        learn(self.volatile, result, result, lambda: parsed.append(1) or info, self.side, 7)
        return len(parsed)


def row(*values: str | None) -> bytes:
    return DataRow(tuple(None if v is None else v.encode() for v in values)).payload()


def columns(oid: int, *names: str) -> tuple[Column, ...]:
    return tuple(Column(n, oid, k + 1, TEXT) for k, n in enumerate(names))


T = columns(OID, "id", "v", "ts")
BY_ID = Ordering(ordered=True, order_columns=(0,))


def judge(h: Harness, cols, truth: list[bytes], target: list[bytes], ordering=BY_ID):
    verdict = compare_rows(cols, truth, cols, target, ordering)
    return h.volatile.judge("app", cols, truth, cols, target, ordering, verdict, ("t",))


class CatalogTests(SynchronousTestCase):
    def test_facts_of_a_table(self) -> None:
        h = Harness()
        facts = self.successResultOf(h.catalog.table(h.side, "t", ("t",)))
        ts, day = facts.column("ts"), facts.column("day")
        self.assertEqual((facts.oid, ts.volatile, ts.sequence, ts.how), (OID, True, False,
                         "default now()"))  # fmt: skip
        self.assertTrue(day.generated)
        self.assertFalse(day.volatile)
        self.assertEqual(day.depends_on, (3,))
        self.assertEqual(facts.column("#3"), ts)
        self.assertIs(h.catalog.by_oid("app", OID), facts)
        k = self.successResultOf(h.catalog.table(h.side, "k", ("k",)))
        self.assertTrue(k.column("id").sequence)
        s = self.successResultOf(h.catalog.table(h.side, "s", ("s",)))
        self.assertEqual(s.triggers[0].columns, ("stamped",))

    def test_one_read_per_table_until_ddl(self) -> None:
        h = Harness()
        h.hold = True
        first = h.catalog.table(h.side, "t", ("t",))
        second = h.catalog.table(h.side, "t", ("t",))
        self.assertEqual(h.connections, 1)
        h.held[0].callback(FakeBackend(h.queries))
        self.assertIs(self.successResultOf(first), self.successResultOf(second))
        h.hold = False
        h.catalog.table(h.side, "t", ("t",))
        self.assertEqual(h.connections, 1)
        h.catalog.forget("app", "t")
        h.catalog.table(h.side, "t", ("t",))
        self.assertEqual(h.connections, 2)
        self.assertIn("statement_timeout", h.queries[0])

    def test_a_failed_read_is_none_and_times_out(self) -> None:
        h = Harness()
        h.hold = True
        d = h.catalog.table(h.side, "t", ("t",))
        h.held[0].errback(RuntimeError("refused"))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(h.catalog.failed, 1)
        self.assertIsNone(self.successResultOf(h.catalog.table(h.side, "x", ("a", "b", "c"))))


class LearningTests(SynchronousTestCase):
    def test_a_default_left_to_the_server(self) -> None:
        h = Harness()
        h.write("insert into t (id, v) values (1, 'a')")
        (event,) = h.events
        self.assertEqual(event["kind"], "volatile_write")
        self.assertEqual(event["session"], 7)
        self.assertEqual(
            [(c["column"], c["kind"]) for c in event["columns"]],
            [("ts", "default"), ("day", "generated")],
        )
        self.assertIn("t.ts: default now(), written on each server separately", event["reason"])
        h.write("insert into t (id, v) values (2, 'b')")
        self.assertEqual(len(h.events), 1)  # once per column

    def test_an_explicit_value_is_not_volatile(self) -> None:
        h = Harness()
        h.write("insert into t (id, v, ts) values (1, 'a', '2020-01-01')")
        self.assertEqual(h.events, [])

    def test_nothing_written_or_written_differently(self) -> None:
        h = Harness()
        h.write("insert into t (id, v) values (1, 'a')", tag=b"INSERT 0 0")
        (info,) = analyze("insert into t (id) values (1)")
        truth = SimpleNamespace(tag=b"INSERT 0 1", error=None)
        target = SimpleNamespace(tag=b"INSERT 0 2", error=None)
        learn(h.volatile, truth, target, lambda: info, h.side, 7)
        self.assertEqual((h.events, h.connections), ([], 0))

    def test_update_set_now_and_generated_columns_over_it(self) -> None:
        h = Harness()
        h.write("update t set ts = now() where id = 1", tag=b"UPDATE 1")
        (event,) = h.events
        self.assertEqual(
            [(c["column"], c["how"]) for c in event["columns"]],
            [("ts", "set to now() by UPDATE"),
             ("day", "generated always as ((ts + '1 day'::interval)) over t.ts")],
        )  # fmt: skip

    def test_serial_key(self) -> None:
        h = Harness()
        h.write("insert into k (who, n) values (1, 2)")
        (event,) = h.events
        self.assertEqual(event["columns"][0]["kind"], "key")
        self.assertIn("k.id: a sequence-generated key", event["reason"])

    def test_plain_tables_are_not_parsed_again(self) -> None:
        h = Harness()
        TABLES['"p"'] = ([[str(OID + 9), "1", "id", None, "", "", None, None]], [])
        self.addCleanup(TABLES.pop, '"p"')
        self.assertEqual(h.write("insert into p values (1)"), 1)
        self.assertTrue(h.volatile.plain(h.side, {"p"}))
        self.assertFalse(h.volatile.plain(h.side, {"t"}))
        self.assertEqual(h.write("update p set id = 2 where id = 1", b"UPDATE 1"), 0)
        self.assertEqual(h.write("insert into p values (random())"), 1)  # may be volatile
        self.assertEqual(h.write("with x as (select 1) insert into p select 1"), 1)
        self.assertEqual(h.write("insert into p values (1); insert into t (id) values (2)"), 1)

    def test_ddl_adding_a_volatile_default(self) -> None:
        h = Harness()
        h.write("insert into t (id, v, ts) values (1, 'a', '2020-01-01')")
        T_COLUMNS.append([str(OID), "5", "seen", "clock_timestamp()", "", "", None, None])
        self.addCleanup(T_COLUMNS.pop)
        (info,) = analyze("alter table t add column seen timestamptz default clock_timestamp()")
        result = SimpleNamespace(tag=b"ALTER TABLE", error=None)
        learn(h.volatile, result, result, lambda: info, h.side, 7)
        (event,) = h.events
        self.assertEqual(event["columns"][0]["column"], "seen")
        self.assertIn("filled in by ALTER TABLE", event["reason"])

    def test_off_learns_nothing(self) -> None:
        h = Harness(auto=False)
        h.write("insert into t (id, v) values (1, 'a')")
        self.assertEqual((h.events, h.connections), ([], 0))

    def test_generated_by_positions(self) -> None:
        h = Harness()
        table = self.successResultOf(h.catalog.table(h.side, "t", ("t",)))
        (facts,) = write_facts("insert into t values (1, 'a', default)")
        self.assertEqual(sorted(generated_by(facts, table)), [3, 4])
        (facts,) = write_facts("copy t from stdin")
        self.assertEqual(generated_by(facts, table), {})


class RuleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.h.write("insert into t (id, v) values (1, 'a')")
        self.written = self.h.events[0]["id"]

    def test_differences_only_in_the_volatile_column_are_noise(self) -> None:
        truth = [
            row("5", "a", "2026-12-07 10:00:00.1+00"),
            row("6", "b", "2026-12-07 10:00:00.1+00"),
        ]
        target = [
            row("5", "a", "2026-12-07 10:00:00.2+00"),
            row("6", "b", "2026-12-07 10:00:00.3+00"),
        ]
        judged = judge(self.h, T, truth, target)
        self.assertEqual(judged.kind, "noise")
        self.assertEqual(judged.caused_by, self.written)
        self.assertEqual(
            judged.reason,
            f"t.ts: default now(), written on each server separately (event {self.written})",
        )

    def test_another_column_is_still_a_mismatch_naming_only_it(self) -> None:
        truth = [row("5", "a", "x1"), row("6", "b", "x2")]
        target = [row("5", "a", "y1"), row("6", "changed", "y2")]
        judged = judge(self.h, T, truth, target)
        self.assertEqual(judged.kind, "result_mismatch")
        (difference,) = judged.comparison.differences
        self.assertEqual(difference.columns, ("v",))
        self.assertEqual(difference.truth, ("6", "b", "x2"))  # shown whole
        self.assertIn("t.ts compared apart", judged.reason)

    def test_null_against_a_value_is_real(self) -> None:
        judged = judge(self.h, T, [row("5", "a", "x1")], [row("5", "a", None)])
        self.assertEqual(judged.kind, "result_mismatch")
        self.assertEqual(judged.comparison.differences[0].columns, ("ts",))

    def test_unrelated_columns_are_not_judged(self) -> None:
        other = columns(OID + 5, "id", "v", "ts")
        self.assertIsNone(judge(self.h, other, [row("1", "a", "x")], [row("1", "a", "y")]))

    def test_sequence_keys_match_rows_on_the_other_columns(self) -> None:
        self.h.write("insert into k (who, n) values (1, 2)")
        k = columns(OID + 1, "id", "who", "n")
        truth = [row("1", "1", "0"), row("2", "2", "0"), row("3", "1", "1")]
        target = [row("1", "2", "0"), row("2", "1", "0"), row("3", "1", "1")]
        judged = judge(self.h, k, truth, target)
        self.assertEqual(judged.kind, "noise")
        self.assertIn("rows matched on their other columns", judged.reason)
        target[0] = row("1", "2", "-1")
        judged = judge(self.h, k, truth, target)
        self.assertEqual(judged.kind, "result_mismatch")
        self.assertEqual([d.columns for d in judged.comparison.differences], [("n",)])
        self.assertIn("rows matched on their other columns", judged.reason)


class ObservationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.h.write("insert into s (id, v) values (1, 'a')")
        self.s = columns(OID + 2, "id", "v", "stamped")

    def test_one_column_a_trigger_names(self) -> None:
        self.assertEqual(self.h.events, [])  # the SQL and the catalog did not say
        judged = judge(self.h, self.s, [row("1", "a", "x")], [row("1", "a", "y")])
        self.assertEqual(judged.kind, "noise")
        (event,) = self.h.events
        self.assertEqual(judged.caused_by, event["id"])
        self.assertIn("s.stamped: set by trigger stamp (stamp_rows())", judged.reason)
        judged = judge(self.h, self.s, [row("1", "a", "x")], [row("1", "b", "z")])
        self.assertEqual(judged.kind, "result_mismatch")  # remembered: v alone differs
        self.assertEqual(judged.comparison.differences[0].columns, ("v",))

    def test_confirmed_on_every_row_not_only_the_listed_ones(self) -> None:
        truth = [row(str(i), "a", f"x{i}") for i in range(50)]
        target = [row(str(i), "a", f"y{i}") for i in range(50)]
        cols, order = self.s, BY_ID
        verdict = compare_rows(cols, truth, cols, target, order, max_differences=3)
        target[40] = row("40", "changed", "y40")  # beyond the three differences listed
        judged = self.h.volatile.judge("app", cols, truth, cols, target, order, verdict)
        self.assertIsNone(judged)
        self.assertEqual(self.h.events, [])
        target[40] = row("40", "a", "y40")
        judged = self.h.volatile.judge("app", cols, truth, cols, target, order, verdict)
        self.assertEqual((judged.kind, len(self.h.events)), ("noise", 1))

    def test_two_columns_or_a_null_are_not_observed(self) -> None:
        self.assertIsNone(judge(self.h, self.s, [row("1", "a", "x")], [row("1", "b", "y")]))
        self.assertIsNone(judge(self.h, self.s, [row("1", "a", "x")], [row("1", "a", None)]))
        self.assertIsNone(judge(self.h, self.s, [row("1", "x", "x")], [row("1", "y", "x")]))
        self.assertEqual(self.h.events, [])


class ConfiguredTests(SynchronousTestCase):
    def test_listed_columns_without_a_catalog(self) -> None:
        h = Harness(auto=False, configured=("public.t.ts",))
        judged = judge(h, T, [row("1", "a", "x")], [row("1", "a", "y")])
        self.assertEqual(judged.kind, "noise")
        self.assertEqual(judged.reason, "t.ts: listed in comparison.volatile-column-list")
        self.assertIsNone(judged.caused_by)


class TeachesTests(SynchronousTestCase):
    def test_only_writes_and_ddl_teach_the_history(self) -> None:
        for tag in (b"INSERT 0 1", b"UPDATE 3", b"MERGE 1", b"COPY 5", b"CREATE TABLE",
                    b"ALTER TABLE", b"DROP TABLE"):  # fmt: skip
            self.assertTrue(teaches(tag), tag)
        for tag in (None, b"", b"SELECT 1", b"SELECT 0", b"DELETE 2", b"BEGIN", b"SET"):
            self.assertFalse(teaches(tag), tag)

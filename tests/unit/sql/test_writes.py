"""twinkly.sql.writes: which columns a write statement gives values each server computes."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twinkly.sql.writes import WriteFacts, volatile_call, write_facts


def one(sql: str) -> WriteFacts:
    (facts,) = write_facts(sql)
    return facts


class InsertTests(SynchronousTestCase):
    def test_values_with_a_volatile_call_and_default(self) -> None:
        facts = one("insert into t (id, v, ts) values (1, 'a', now()), (2, 'b', default)")
        self.assertEqual(facts.table, "t")
        self.assertEqual(facts.command, "insert")
        self.assertEqual(facts.volatile, (("ts", "now()"),))
        self.assertEqual(facts.listed, ("id", "v", "ts"))
        self.assertEqual(facts.defaulted, ("ts",))
        self.assertTrue(facts.inserts)

    def test_columns_left_out_are_not_listed(self) -> None:
        facts = one("insert into s.T (id) values (1)")
        self.assertEqual((facts.table, facts.relation), ("s.t", ("s", "t")))
        self.assertEqual(facts.listed, ("id",))
        self.assertEqual(facts.volatile, ())

    def test_no_column_list_names_positions(self) -> None:
        facts = one("insert into t values (1, clock_timestamp())")
        self.assertIsNone(facts.listed)
        self.assertEqual(facts.width, 2)
        self.assertEqual(facts.volatile, (("#2", "clock_timestamp()"),))

    def test_insert_select_maps_the_target_list(self) -> None:
        facts = one(
            "insert into t (id, u) select g, gen_random_uuid() from generate_series(1, 3) g"
        )
        self.assertEqual(facts.volatile, (("u", "gen_random_uuid()"),))

    def test_on_conflict_do_update(self) -> None:
        facts = one(
            "insert into t (id, v) values (1, 'a') on conflict (id) do update"
            " set seen = clock_timestamp(), v = excluded.v"
        )
        self.assertEqual(facts.volatile, (("seen", "clock_timestamp()"),))
        self.assertEqual(facts.updated, ("seen", "v"))

    def test_sql_value_functions_and_now_literals(self) -> None:
        facts = one("insert into t (a, b, c) values (current_timestamp, 'now'::timestamptz, 1)")
        self.assertEqual(facts.volatile, (("a", "current_timestamp"), ("b", "'now'::timestamptz")))

    def test_in_a_data_modifying_cte(self) -> None:
        facts = one("with x as (insert into t (id, r) values (1, random()) returning id) select 1")
        self.assertEqual(facts.volatile, (("r", "random()"),))


class UpdateMergeCopyTests(SynchronousTestCase):
    def test_update_set(self) -> None:
        facts = one("update t set updated_at = now() + interval '1 day', v = 'x', d = default")
        self.assertEqual(facts.volatile, (("updated_at", "an expression calling now()"),))
        self.assertEqual(facts.updated, ("updated_at", "v", "d"))
        self.assertEqual(facts.defaulted, ("d",))
        self.assertFalse(facts.inserts)

    def test_update_multi_assignment(self) -> None:
        facts = one("update t set (a, b) = (1, now())")
        self.assertEqual(facts.volatile, (("b", "now()"),))

    def test_merge(self) -> None:
        facts = one(
            "merge into t using src on t.id = src.id"
            " when matched then update set ts = now()"
            " when not matched then insert (id, made) values (src.id, random())"
        )
        self.assertEqual(facts.command, "merge")
        self.assertEqual(set(facts.volatile), {("ts", "now()"), ("made", "random()")})
        self.assertEqual(facts.listed, ("id", "made"))
        self.assertTrue(facts.inserts)

    def test_copy_is_not_volatile_but_leaves_defaults(self) -> None:
        facts = one("copy t (id, v) from stdin")
        self.assertEqual((facts.command, facts.volatile, facts.listed), ("copy", (), ("id", "v")))
        whole = one("copy t from stdin")
        self.assertEqual((whole.listed, whole.width), (None, -1))
        self.assertEqual(write_facts("copy t to stdout"), ())

    def test_not_writes_and_bad_sql(self) -> None:
        for sql in ("select now()", "selec 1", "delete from t", "x\x00"):
            self.assertEqual(write_facts(sql), (), sql)

    def test_user_and_schema_functions(self) -> None:
        self.assertIsNone(volatile_call({"FuncCall": {"funcname": [{"String": {"sval": "f"}}]}}))
        other = {"FuncCall": {"funcname": [{"String": {"sval": "x"}}, {"String": {"sval": "now"}}]}}
        self.assertIsNone(volatile_call(other))

"""What Twinkly reads from SQL: ordering, limits, volatility, tables, kinds, redaction, cache."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twinkly.sql.analysis import StatementCache, StatementInfo, analyze


def one(sql: str) -> StatementInfo:
    infos = analyze(sql)
    assert len(infos) == 1, infos
    return infos[0]


class OrderingTests(SynchronousTestCase):
    # sql, ordered, order_columns, set_operation
    CASES = [
        ("select a, b from t", False, (), None),
        ("select a, b from t order by 1", True, (0,), None),
        ("select a, b from t order by 2 desc, 1", True, (1, 0), None),
        ("select a as x, b as y from t order by y", True, (1,), None),
        ("select t.a, t.b from t order by b", True, (1,), None),
        ("select a, lower(b) from t order by lower(b)", True, (1,), None),
        ("select a, count(*) from t group by a order by count(*) desc", True, (1,), None),
        ("select a, count(*) from t group by a order by count", True, (1,), None),
        ("select a, b from t order by a + b", True, None, None),
        ("select a from t order by b", True, None, None),
        ("select a from t order by 3", True, None, None),
        ("select * from t order by a", True, None, None),
        ("select a, * from t order by 1", True, (0,), None),
        ("select *, a from t order by 2", True, None, None),
        ("select *, a, b from t order by 2", True, None, None),
        ("select *, a from t order by a", True, None, None),
        ('select a from t order by a collate "C"', True, None, None),
        ("values (1, 'x'), (2, 'y') order by 2", True, (1,), None),
        ("values (1, 'x'), (2, 'y') order by column1", True, (0,), None),
        ("select a from t union select b from u order by 1", True, (0,), "union"),
        ("select a as k from t union all select b from u order by k", True, (0,), "union"),
        ("select a from t intersect select b from u", False, (), "intersect"),
        ("select a from t except select b from u order by a + 1", True, None, "except"),
        ("select t.a from t union select b from u order by t.a", True, None, "union"),
        ("select * from (select a from t order by a) s", False, (), None),
        ("select a from t where a in (select b from u order by b limit 1)", False, (), None),
        ("with c as (select a from t order by a) select a from c", False, (), None),
        ("(select a from t order by a) union (select b from u)", False, (), "union"),
    ]

    def test_ordering(self) -> None:
        for sql, ordered, columns, set_op in self.CASES:
            info = one(sql)
            self.assertEqual(
                (info.ordered, info.order_columns, info.set_operation),
                (ordered, columns, set_op),
                sql,
            )

    def test_wrapped_queries(self) -> None:
        """DECLARE and PREPARE describe the rows FETCH and EXECUTE will return."""
        for sql in (
            "declare c cursor for select a, b from t order by b",
            "prepare p(int) as select a, b from t where a > $1 order by b",
            "copy (select a, b from t order by b) to stdout",
        ):
            info = one(sql)
            self.assertEqual((info.ordered, info.order_columns), (True, (1,)), sql)
        self.assertEqual(one("update t set a = 1 returning a").ordered, False)
        self.assertIsNone(one("update t set a = 1 returning a").order_columns)


class LimitTests(SynchronousTestCase):
    # sql, limited, distinct_on
    CASES = [
        ("select a from t", False, False),
        ("select a from t limit 10", True, False),
        ("select a from t limit $1", True, False),
        ("select a from t offset 5", True, False),
        ("select a from t limit all", False, False),
        ("select a from t fetch first 3 rows only", True, False),
        ("select a from t order by a fetch first 3 rows with ties", True, False),
        ("select a from t union select b from u limit 1", True, False),
        ("select a from t where a in (select b from u limit 1)", False, False),
        ("select distinct a from t", False, False),
        ("select distinct on (a) a, b from t order by a, b", False, True),
    ]

    def test_limits(self) -> None:
        for sql, limited, distinct_on in self.CASES:
            info = one(sql)
            self.assertEqual((info.limited, info.distinct_on), (limited, distinct_on), sql)


class FunctionTests(SynchronousTestCase):
    # sql, volatile, server_identity, read_only
    CASES = [
        ("select a from t", (), (), True),
        ("select now()", ("now",), (), False),
        ("select pg_catalog.now()", ("now",), (), False),
        (
            "select current_timestamp, localtimestamp",
            ("current_timestamp", "localtimestamp"),
            (),
            False,
        ),
        ("select current_time(3), current_date", ("current_date", "current_time"), (), False),
        ("select * from t where ts > 'now'::timestamptz", ("now",), (), False),
        ("select random(), random()", ("random",), (), False),
        ("select gen_random_uuid()", ("gen_random_uuid",), (), False),
        ("select nextval('s')", ("nextval",), (), False),
        ("select version()", (), ("version",), True),
        ("select pg_backend_pid()", (), ("pg_backend_pid",), True),
        ("select current_setting('server_version')", (), ("current_setting",), True),
        ("select txid_current()", ("txid_current",), ("txid_current",), False),
        ("select xmin, ctid from t", (), ("ctid", "xmin"), True),
        ("select t.xmax from t", (), ("xmax",), True),
        ("select count(*), max(a), lower(b) from t group by b", (), (), True),
        ("select * from t where a = (select now())", ("now",), (), False),
        ("select 'now'", (), (), True),
        ("select current_user", (), (), True),
        ("show server_version", (), ("server_version",), True),
        ("SHOW data_directory", (), ("data_directory",), True),
        ("show port", (), ("port",), True),
        ("show work_mem", (), (), True),
    ]

    def test_functions(self) -> None:
        for sql, volatile, identity, read_only in self.CASES:
            info = one(sql)
            self.assertEqual(
                (info.volatile, info.server_identity, info.read_only),
                (volatile, identity, read_only),
                sql,
            )


class TableTests(SynchronousTestCase):
    # sql, reads, writes, read_only
    CASES = [
        ("select * from t join s.u on true", {"t", "s.u"}, set(), True),
        ('select * from "Orders"', {"orders"}, set(), True),
        ("select * from t where a in (select b from u)", {"t", "u"}, set(), True),
        ("with x as (select * from t) select * from x", {"t"}, set(), True),
        ("with x as (delete from a returning *) select * from x", set(), {"a"}, False),
        ("with t as (select * from t) select * from t", {"t"}, set(), True),
        ("with x as (select 1) select * from s.x", {"s.x"}, set(), True),
        (
            "with recursive r as (select 1 union all select 1 from r) select * from r",
            set(),
            set(),
            True,
        ),
        ("select * from t for update", {"t"}, set(), False),
        ("select * from t for no key update", {"t"}, set(), False),
        ("select * from t for share skip locked", {"t"}, set(), False),
        ("select * from t for key share", {"t"}, set(), False),
        ("select a into n from t", {"t"}, {"n"}, False),
        ("select my_function(a) from t", {"t"}, set(), False),
        ("select pg_catalog.lower(a) from t", {"t"}, set(), True),
        ("select public.lower(a) from t", {"t"}, set(), False),
        ("select * from my_srf()", set(), set(), False),
        ("table t", {"t"}, set(), True),
        ("values (1)", set(), set(), True),
        ("show work_mem", set(), set(), True),
        ("insert into t (a) select b from u", {"u"}, {"t"}, False),
        ("update t set a = u.a from u where t.id = u.id", {"u"}, {"t"}, False),
        ("delete from s.t using u where s.t.id = u.id", {"u"}, {"s.t"}, False),
        ("merge into t using u on t.id = u.id when matched then delete", {"u"}, {"t"}, False),
        ("copy t from stdin", set(), {"t"}, False),
        ("copy t to stdout", {"t"}, set(), False),
        ("copy (select * from t) to stdout", {"t"}, set(), False),
        ("truncate a, s.b", set(), {"a", "s.b"}, False),
        ("create table n (a int)", set(), {"n"}, False),
        ("create table n as select * from t", {"t"}, {"n"}, False),
        ("alter table t add column b int", set(), {"t"}, False),
        ("alter table t rename to u", set(), {"t", "u"}, False),
        ("drop table if exists a, s.b cascade", set(), {"a", "s.b"}, False),
        ("create index on t (a)", set(), {"t"}, False),
        ("grant select on t to bob", set(), set(), False),
        ("lock table t", set(), set(), False),
        ("explain select * from t", {"t"}, set(), True),
        ("explain delete from t", set(), set(), True),
        ("explain analyze delete from t", set(), {"t"}, False),
        ("explain (analyze) select * from t", {"t"}, set(), True),
    ]

    def test_tables(self) -> None:
        for sql, reads, writes, read_only in self.CASES:
            info = one(sql)
            self.assertEqual(
                (set(info.reads), set(info.writes), info.read_only),
                (reads, writes, read_only),
                sql,
            )


class KindTests(SynchronousTestCase):
    # sql, kind, transaction, sets
    CASES = [
        ("select 1", "select", None, ()),
        ("insert into t values (1)", "insert", None, ()),
        ("update t set a = 1", "update", None, ()),
        ("delete from t", "delete", None, ()),
        ("merge into t using u on true when matched then delete", "merge", None, ()),
        ("copy t from stdin", "copy", None, ()),
        ("create table x (a int)", "ddl", None, ()),
        ("drop view v", "ddl", None, ()),
        ("truncate t", "ddl", None, ()),
        ("call p(1)", "call", None, ()),
        ("show all", "other", None, ()),
        ("explain select 1", "other", None, ()),
        ("vacuum t", "other", None, ()),
        ("begin", "transaction", "begin", ()),
        ("start transaction isolation level serializable", "transaction", "begin", ()),
        ("commit", "transaction", "commit", ()),
        ("end", "transaction", "commit", ()),
        ("rollback", "transaction", "rollback", ()),
        ("abort", "transaction", "rollback", ()),
        ("savepoint s1", "transaction", "savepoint", ()),
        ("release savepoint s1", "transaction", "release", ()),
        ("rollback to savepoint s1", "transaction", "rollback_to", ()),
        ("prepare transaction 'g'", "transaction", "prepare", ()),
        ("commit prepared 'g'", "transaction", "commit_prepared", ()),
        ("rollback prepared 'g'", "transaction", "rollback_prepared", ()),
        ("set search_path = a, b", "set", None, ("search_path",)),
        ("SET LOCAL Work_Mem TO '4MB'", "set", None, ("work_mem",)),
        ("set time zone 'UTC'", "set", None, ("timezone",)),
        ("set names 'utf8'", "set", None, ("client_encoding",)),
        ("reset statement_timeout", "set", None, ("statement_timeout",)),
        ("reset all", "set", None, ("all",)),
        ("discard all", "set", None, ("all",)),
        ("discard plans", "set", None, ("plans",)),
        (
            "set transaction isolation level serializable, read only",
            "set",
            None,
            ("transaction_isolation", "transaction_read_only"),
        ),
        (
            "set session characteristics as transaction isolation level read committed",
            "set",
            None,
            ("default_transaction_isolation",),
        ),
        ("select set_config('Search_Path', 'x', false)", "select", None, ("search_path",)),
        ("selec 1", "unparsed", None, ()),
    ]

    def test_kinds(self) -> None:
        for sql, kind, transaction, sets in self.CASES:
            info = one(sql)
            self.assertEqual(
                (info.kind, info.transaction, info.sets), (kind, transaction, sets), sql
            )


class SplitTests(SynchronousTestCase):
    def test_multi_statement(self) -> None:
        infos = analyze("select 1; update t set a = 1; commit")
        self.assertEqual([i.sql for i in infos], ["select 1", "update t set a = 1", "commit"])
        self.assertEqual([i.kind for i in infos], ["select", "update", "transaction"])
        self.assertEqual(
            [i.redacted for i in infos], ["select $1", "update t set a = $1", "commit"]
        )

    def test_semicolons_in_literals_and_comments(self) -> None:
        sql = "/* a; */ select ';' ; -- b;\n insert into t values ($$;$$) ; ;"
        infos = analyze(sql)
        self.assertEqual([i.kind for i in infos], ["select", "insert"])
        self.assertEqual(infos[0].sql, "select ';'")
        self.assertEqual(infos[1].redacted, "insert into t values ($1)")

    def test_non_ascii(self) -> None:
        """Parser locations count bytes; the texts and redactions are in characters."""
        infos = analyze("select 'é', 1 from \"tâble\"; select 'ü', -2, a from t where b = 'ß'")
        self.assertEqual(infos[0].redacted, 'select $1, $2 from "tâble"')
        self.assertEqual(infos[0].reads, frozenset({"tâble"}))
        self.assertEqual(infos[1].sql, "select 'ü', -2, a from t where b = 'ß'")
        self.assertEqual(infos[1].redacted, "select $1, $2, a from t where b = $3")

    def test_empty(self) -> None:
        self.assertEqual(analyze(""), ())
        self.assertEqual(analyze("  -- nothing\n"), ())
        self.assertEqual(analyze(";;"), ())


class RedactionTests(SynchronousTestCase):
    CASES = [
        ("select 1, 2.5, 1e-3, .5, 0x1F", "select $1, $2, $3, $4, $5"),
        ("select -1, - 2, -1.5, a-1, 1-1", "select $1, $2, $3, a-$4, $5-$6"),
        ("select -(1), -(-2), - -3, +4", "select $1, $2, $3, +$4"),
        ("select 'it''s', E'a\\'b', 'x'", "select $1, $2, $3"),
        ("select $$it's$$, $tag$ $$ ' $tag$", "select $1, $2"),
        ("select B'101', X'ff', N'x'", "select $1, $2, $3"),
        ("select U&'d!0061t' UESCAPE '!'", "select $1"),
        ("select 1 as U&\"d*0061t\" UESCAPE '*'", "select $1 as U&\"d*0061t\" UESCAPE '*'"),
        ("select 'a'\n  'b'", "select $1"),
        ('select "it\'s", t."A" from "T" t', 'select "it\'s", t."A" from "T" t'),
        ("select a from t where b = $1 and c = 'x' and d = 7", None),
        ("select $2, 5", "select $2, $3"),
        ("select a::numeric(10, 2), b::varchar(3) from t", None),
        ("select a, count(*) from t group by 1 order by 2 desc limit 10", None),
        ("select true, false, null", None),
        ("select * from t where d = date '2024-01-01'", "select * from t where d = date $1"),
        ("create role bob password 'secret'", "create role bob password $1"),
        ("comment on table t is 'private'", "comment on table t is $1"),
        ("set statement_timeout = 5000", "set statement_timeout = $1"),
        ("select /* 'c' 1 */ 2 -- '3'", "select /* 'c' 1 */ $1 -- '3'"),
        ("start transaction read only", "start transaction read only"),
    ]
    EXPECTED = {
        "select a from t where b = $1 and c = 'x' and d = 7": (
            "select a from t where b = $1 and c = $2 and d = $3"
        ),
        "select a::numeric(10, 2), b::varchar(3) from t": (
            "select a::numeric(10, 2), b::varchar(3) from t"
        ),
        "select a, count(*) from t group by 1 order by 2 desc limit 10": (
            "select a, count(*) from t group by 1 order by 2 desc limit $1"
        ),
        "select true, false, null": "select true, false, null",
    }

    def test_redaction(self) -> None:
        for sql, redacted in self.CASES:
            expected = redacted or self.EXPECTED[sql]
            self.assertEqual(one(sql).redacted, expected, sql)

    def test_redacted_queries_keep_their_fingerprint(self) -> None:
        """Literals became parameters, nothing else changed: the parser sees the same query."""
        for sql, _ in self.CASES:
            info = one(sql)
            if info.kind == "select":
                self.assertEqual(one(info.redacted).fingerprint, info.fingerprint, sql)

    def test_fingerprint(self) -> None:
        same = [
            "select * from t where a = 1",
            "select * from t where a = 42",
            "SELECT *\n FROM t WHERE a = $1",
        ]
        self.assertEqual(len({one(sql).fingerprint for sql in same}), 1)
        self.assertNotEqual(
            one(same[0]).fingerprint, one("select * from u where a = 1").fingerprint
        )
        self.assertNotEqual(
            one(same[0]).fingerprint, one("select * from t where b = 1").fingerprint
        )
        self.assertRegex(one(same[0]).fingerprint, "^[0-9a-f]{16}$")


class UnparsedTests(SynchronousTestCase):
    def test_never_raises(self) -> None:
        for sql in (
            "selec 1",
            "select 'unterminated",
            "select 1; selec 2",
            "select \x00 1",
            "\ud800",
            "select " + "(" * 5000 + "1" + ")" * 5000,
            "select " + "1+" * 20000 + "1",
            "",
        ):
            infos = analyze(sql)
            self.assertIsInstance(infos, tuple)

    def test_nul_is_not_cut_short(self) -> None:
        """libpg_query stops at a NUL; what it read would describe another statement."""
        self.assertEqual(one("select \x00 1").kind, "unparsed")

    def test_deep_expressions_parse(self) -> None:
        """Hundreds of nested operators go past the JSON decoder's default depth."""
        info = one("select " + "a || " * 1000 + "'x' from t")
        self.assertEqual((info.kind, info.reads), ("select", frozenset({"t"})))
        self.assertTrue(info.redacted.endswith("a || $1 from t"), info.redacted[-30:])

    def test_unparsed_shape(self) -> None:
        info = one("selec   1\n")
        self.assertEqual(
            (info.kind, info.redacted, info.sql, info.reads, info.read_only, info.ordered),
            ("unparsed", "<unparsed>", "selec   1\n", frozenset(), False, False),
        )
        self.assertEqual(info.fingerprint, one("selec 1").fingerprint)
        self.assertNotEqual(info.fingerprint, one("selec 2").fingerprint)
        self.assertRegex(info.fingerprint, "^[0-9a-f]{16}$")

    def test_one_bad_statement_spoils_the_string(self) -> None:
        self.assertEqual([i.kind for i in analyze("select 1; selec 2")], ["unparsed"])


class CacheTests(SynchronousTestCase):
    def test_hits_and_misses(self) -> None:
        cache = StatementCache()
        first = cache.get("select 1")
        self.assertIs(cache.get("select 1"), first)
        cache.get("select 2")
        self.assertEqual((cache.hits, cache.misses, len(cache)), (1, 2, 2))
        self.assertEqual(first, analyze("select 1"))

    def test_evicts_least_recently_used_by_count(self) -> None:
        cache = StatementCache(max_entries=2)
        cache.get("select 1")
        cache.get("select 2")
        cache.get("select 1")  # now "select 2" is the oldest
        cache.get("select 3")
        self.assertEqual(len(cache), 2)
        cache.get("select 1")
        self.assertEqual((cache.hits, cache.misses), (2, 3))
        cache.get("select 2")
        self.assertEqual((cache.hits, cache.misses), (2, 4))

    def test_evicts_by_total_length(self) -> None:
        cache = StatementCache(max_bytes=20)
        cache.get("select 11")  # 9 characters
        cache.get("select 22")
        self.assertEqual((len(cache), cache.size), (2, 18))
        cache.get("select 33")
        self.assertEqual((len(cache), cache.size), (2, 18))
        cache.get("select 11")
        self.assertEqual(cache.misses, 4)

    def test_oversized_text_is_not_cached(self) -> None:
        cache = StatementCache(max_bytes=10)
        long_sql = "select 1234567890"
        self.assertEqual(cache.get(long_sql)[0].kind, "select")
        self.assertEqual((len(cache), cache.size), (0, 0))
        cache.get(long_sql)
        self.assertEqual((cache.hits, cache.misses), (0, 2))

    def test_oversized_text_does_not_flush_the_cache(self) -> None:
        cache = StatementCache(max_bytes=30)
        cache.get("select 1")
        cache.get("select " + "1" * 40)
        self.assertEqual((len(cache), cache.size), (1, 8))
        cache.get("select 1")
        self.assertEqual(cache.hits, 1)

"""psycopg 3 through Twinkly: each scenario runs through the proxy and directly against the
source of truth (its own database), and must give the same outcome; afterwards both
databases behind the proxy hold the same rows."""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from proxyproc import same_as_truth
from psycopg.types.json import Jsonb

pytestmark = pytest.mark.backends

Scenario = Callable[[psycopg.Connection], list[Any]]


def outcome(conn: psycopg.Connection, sql: str, params: Any = None, **kw: Any) -> Any:
    """Rows (or status) of one statement, or ("error", sqlstate) - comparable across runs."""
    try:
        cur = conn.execute(sql, params, **kw)
    except psycopg.Error as e:
        return ("error", e.sqlstate, type(e).__name__)
    rows = cur.fetchall() if cur.description is not None else None
    return (cur.statusmessage, cur.rowcount, rows)


def test_simple_queries_autocommit(proxy, oracle_dsn, both_equal) -> None:
    def scenario(conn: psycopg.Connection) -> list[Any]:
        out = [
            outcome(conn, "drop table if exists simple_t"),
            outcome(conn, "create table simple_t (id int primary key, v text)"),
            outcome(conn, "insert into simple_t values (1, 'a'), (2, 'b'), (3, null)"),
            outcome(conn, "update simple_t set v = 'c' where id = 3"),
            outcome(conn, "delete from simple_t where id = 2"),
            outcome(conn, "select * from simple_t order by id"),
            outcome(conn, "select 1/0"),
            outcome(conn, "insert into simple_t values (1, 'dup')"),
            outcome(conn, "selec 1"),
            outcome(conn, ""),
            outcome(conn, "select 'still fine'"),
        ]
        # Several statements in one simple Query: every result, in order.
        cur = conn.execute(
            "select 1 as a; select 'x' as b, 2 as c; insert into simple_t values (9)"
        )
        results = []
        while True:
            results.append((cur.statusmessage, cur.fetchall() if cur.description else None))
            if not cur.nextset():
                break
        out.append(results)
        out.append(outcome(conn, "select 1; select 1/0; insert into simple_t values (10)"))
        out.append(outcome(conn, "select id from simple_t order by id"))
        return out

    got = same_as_truth(proxy, oracle_dsn, scenario, autocommit=True)
    assert got[6][:2] == ("error", "22012")
    assert got[-1][2] == [(1,), (3,), (9,)]
    both_equal("select * from simple_t order by id")


def test_extended_protocol_with_parameters(proxy, oracle_dsn, both_equal) -> None:
    params = [
        (1, "text", None),
        (2**40, "ünïcødé ✓", decimal.Decimal("12345.678901")),
        (-7, "", decimal.Decimal("-0.5")),
    ]

    def scenario(conn: psycopg.Connection) -> list[Any]:
        out = [outcome(conn, "drop table if exists ext_t")]
        out.append(
            outcome(
                conn,
                "create table ext_t (id bigint, t text, n numeric, ts timestamptz, d date,"
                " b bytea, j jsonb, u uuid, a int[], f float8, ok bool)",
            )
        )
        for i, (big, text, num) in enumerate(params):
            values = (
                big,
                text,
                num,
                datetime.datetime(2024, 2, 29, 12, i, tzinfo=datetime.UTC),
                datetime.date(2000 + i, 1, 1),
                bytes(range(i * 7, i * 7 + 20)),
                Jsonb({"i": i, "nested": [1, None, "x"]}),
                uuid.UUID(int=i + 1),
                [i, None, i * 2],
                i / 3,
                i % 2 == 0,
            )
            out.append(
                outcome(conn, "insert into ext_t values (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", values)
            )
        out.append(outcome(conn, "select * from ext_t where id > %s order by id", (-100,)))
        out.append(
            outcome(conn, "select %s::int + %s::int, %s || 'x', %s::text", (40, 2, "a", None))
        )
        out.append(outcome(conn, "select %b::bytea, %t::int", (b"\x00\xff", 5)))
        out.append(outcome(conn, "select %s::int / %s::int", (1, 0)))
        out.append(outcome(conn, "select %s::int", ("not a number",)))
        out.append(outcome(conn, "select count(*) from ext_t where t = any(%s)", (["text", ""],)))
        return out

    got = same_as_truth(proxy, oracle_dsn, scenario, autocommit=True)
    assert got[-3] == ("error", "22012", "DivisionByZero")
    both_equal("select id, t, n, ts, d, b, j, u, a, f, ok from ext_t order by id")


def test_binary_results(proxy, oracle_dsn) -> None:
    sql = (
        "select g::int2, g::int8 * 1000000000, g / 7.0 as n, g::float4 / 3, md5(g::text),"
        " decode(md5(g::text), 'hex'), array[g, g + 1], jsonb_build_object('g', g),"
        " timestamptz '2024-01-01 00:00+00' + g * interval '1 hour 1 second',"
        " date '2024-01-01' + g, interval '1 day' * g, g % 2 = 0,"
        " case when g % 3 = 0 then null else g end, gen_random_uuid() is not null"
        " from generate_series(1, 500) g"
    )

    def scenario(conn: psycopg.Connection) -> list[Any]:
        with conn.cursor(binary=True) as cur:
            cur.execute(sql)
            rows = cur.fetchall()
            columns = [(c.name, c.type_code) for c in cur.description or ()]
            binary = cur.pgresult.fformat(0) if cur.pgresult else None
        with conn.cursor(binary=True) as cur:
            cur.execute("select %s::bytea, %s::text[], %s::int8", (b"\x00\x01", ["a", None], 2**62))
            params = cur.fetchall()
        return [rows, columns, binary, params, outcome(conn, "select 1/0", binary=True)]

    got = same_as_truth(proxy, oracle_dsn, scenario, autocommit=True)
    assert len(got[0]) == 500 and got[2] == 1  # really binary
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        text_rows = conn.execute(sql).fetchall()
    assert text_rows == got[0]


def test_executemany(proxy, oracle_dsn, both_equal) -> None:
    rows = [(i, f"row {i}", i * 1.5) for i in range(1, 501)]

    def scenario(conn: psycopg.Connection) -> list[Any]:
        out = [outcome(conn, "drop table if exists many_t")]
        out.append(outcome(conn, "create table many_t (id int primary key, v text, x float8)"))
        with conn.cursor() as cur:
            cur.executemany("insert into many_t values (%s, %s, %s)", rows)
            out.append(cur.rowcount)
            cur.executemany(
                "update many_t set x = x * 2 where id = %s returning id, x",
                [(i,) for i in range(1, 51)],
                returning=True,
            )
            returned = []
            while True:
                returned.extend(cur.fetchall())
                if not cur.nextset():
                    break
            out.append(returned)
            try:
                cur.executemany(
                    "insert into many_t values (%s, %s, %s)", [(1000, "x", 0), (1, "dup", 0)]
                )
            except psycopg.Error as e:
                out.append(("error", e.sqlstate))
        out.append(outcome(conn, "select count(*), sum(x) from many_t"))
        return out

    got = same_as_truth(proxy, oracle_dsn, scenario, autocommit=True)
    assert got[2] == 500 and len(got[3]) == 50
    assert got[4] == ("error", "23505")
    both_equal("select * from many_t order by id")


def test_transactions(proxy, oracle_dsn, both_equal) -> None:
    def scenario(conn: psycopg.Connection) -> list[Any]:
        out = []
        with conn.transaction():
            conn.execute("drop table if exists tx_t")
            conn.execute("create table tx_t (id int primary key, v text)")
        with conn.transaction():  # commit
            conn.execute("insert into tx_t values (1, 'committed')")
        with conn.transaction():
            conn.execute("insert into tx_t values (2, 'rolled back')")
            raise psycopg.Rollback()
        with conn.transaction():  # savepoint rolled back, outer committed
            conn.execute("insert into tx_t values (3, 'outer')")
            try:
                with conn.transaction():
                    conn.execute("insert into tx_t values (4, 'inner')")
                    conn.execute("insert into tx_t values (3, 'dup')")
            except psycopg.errors.UniqueViolation:
                out.append("inner rolled back")
        # An error inside a transaction, then the aborted state, then rollback.
        conn.autocommit = False
        conn.execute("insert into tx_t values (5, 'lost')")
        out.append(outcome(conn, "select 1/0"))
        out.append(outcome(conn, "select 1"))
        out.append(str(conn.info.transaction_status))
        conn.rollback()
        out.append(str(conn.info.transaction_status))
        conn.execute("insert into tx_t values (6, 'after rollback')")
        conn.commit()
        out.append(outcome(conn, "select * from tx_t order by id"))
        conn.commit()
        return out

    got = same_as_truth(proxy, oracle_dsn, scenario, autocommit=True)
    assert got[2] == ("error", "25P02", "InFailedSqlTransaction")
    assert [r[0] for r in got[-1][2]] == [1, 3, 6]
    both_equal("select * from tx_t order by id")


def test_prepared_statements(proxy, oracle_dsn, both_equal) -> None:
    def scenario(conn: psycopg.Connection) -> list[Any]:
        out = [outcome(conn, "drop table if exists prep_t")]
        out.append(outcome(conn, "create table prep_t (id int primary key, v text)"))
        for i in range(20):
            out.append(
                outcome(conn, "insert into prep_t values (%s, %s)", (i, str(i)), prepare=True)
            )
        for i in range(10):
            out.append(outcome(conn, "select v from prep_t where id = %s", (i,), prepare=True))
        out.append(outcome(conn, "select 10 / %s::int", (0,), prepare=True))
        out.append(outcome(conn, "select 10 / %s::int", (5,), prepare=True))
        out.append(
            outcome(
                conn,
                "select statement from pg_prepared_statements where not from_sql order by 1",
            )
        )
        out.append(outcome(conn, "deallocate all"))
        out.append(outcome(conn, "select v from prep_t where id = %s", (3,), prepare=True))
        return out

    got = same_as_truth(proxy, oracle_dsn, scenario, autocommit=True)
    statements = [r[0] for r in got[-3][2]]
    assert "insert into prep_t values ($1, $2)" in statements
    assert got[-1][2] == [("3",)]
    both_equal("select * from prep_t order by id")

    def everything_prepared(conn: psycopg.Connection) -> list[Any]:
        return [outcome(conn, "select %s::int * 2", (i,)) for i in range(5)] + [
            outcome(conn, "select count(*) from prep_t")
        ]

    same_as_truth(proxy, oracle_dsn, everything_prepared, autocommit=True, prepare_threshold=0)


def test_server_side_cursors(proxy, oracle_dsn) -> None:
    sql = "select g, md5(g::text) from generate_series(1, %s) g"

    def scenario(conn: psycopg.Connection) -> list[Any]:
        out = []
        with conn.cursor(name="batches") as cur:
            cur.execute(sql, (20000,))
            sizes, total = [], []
            while rows := cur.fetchmany(1500):
                sizes.append(len(rows))
                total.extend(rows)
            out += [sizes, total == [(g, _md5(g)) for g in range(1, 20001)]]
        with conn.cursor(name="scroll", scrollable=True) as cur:
            cur.execute(sql, (100,))
            first = cur.fetchmany(10)
            cur.scroll(50, mode="absolute")
            middle = cur.fetchone()
            cur.scroll(-5)
            back = cur.fetchone()
            out += [first, middle, back, cur.fetchall()[-1]]
        conn.commit()
        with conn.cursor(name="held", withhold=True) as cur:
            cur.execute(sql, (300,))
            conn.commit()  # a WITH HOLD cursor outlives its transaction
            out.append([len(cur.fetchmany(100)) for _ in range(4)])
        with conn.cursor(name="broken") as cur:
            try:
                cur.execute("select 1 / (g - 50) from generate_series(1, 100) g")
                cur.fetchall()
            except psycopg.Error as e:
                out.append(("error", e.sqlstate))
        conn.rollback()
        out.append(outcome(conn, "select 'usable'"))
        return out

    got = same_as_truth(proxy, oracle_dsn, scenario)
    assert got[0] == [1500] * 13 + [500] and got[1] is True
    assert got[-3] == [100, 100, 100, 0]
    assert got[-2] == ("error", "22012")


def _md5(g: int) -> str:
    import hashlib

    return hashlib.md5(str(g).encode()).hexdigest()


def test_large_values_both_ways(proxy, both_equal) -> None:
    """A 20 MB parameter (one Bind message) and a 20 MB value back, in binary."""
    import hashlib
    import os

    blob = os.urandom(20 * 1024 * 1024)
    digest = hashlib.md5(blob).hexdigest()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("drop table if exists big_values")
        conn.execute("create table big_values (b bytea)")
        conn.execute("insert into big_values values (%b)", (blob,))
        assert conn.execute("select md5(b) from big_values").fetchone() == (digest,)
        assert conn.execute("select b from big_values", binary=True).fetchone()[0] == blob
        text = "é" * (5 * 1024 * 1024)
        assert conn.execute("select %s::text", (text,)).fetchone() == (text,)
    assert both_equal("select md5(b) from big_values") == [(digest,)]

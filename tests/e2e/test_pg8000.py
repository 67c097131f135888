"""pg8000's native interface through Twinkly: simple queries, parameters, errors,
transactions. pg8000 is pure Python and speaks the extended protocol with unnamed
statements, a different message pattern from libpq's."""

from __future__ import annotations

import datetime
import decimal
from typing import Any

import pg8000.native
import pytest

pytestmark = pytest.mark.backends


def _connect(port: int, host: str = "127.0.0.1", database: str = "app") -> Any:
    return pg8000.native.Connection(
        "twinkly", host=host, port=port, password="twinkly-pw", database=database, timeout=10
    )


def _outcome(conn: Any, sql: str, **params: Any) -> Any:
    try:
        rows = conn.run(sql, **params)
    except pg8000.native.DatabaseError as e:
        return ("error", e.args[0]["C"])
    return (rows, conn.row_count, [c["name"] for c in conn.columns or ()])


def scenario(conn: Any) -> list[Any]:
    out = [
        _outcome(conn, "drop table if exists p8_t"),
        _outcome(conn, "create table p8_t (id int primary key, v text, n numeric, d date)"),
        _outcome(conn, "select 1 as one, 'two' as two, null as three"),
        _outcome(conn, "select version() like 'PostgreSQL 15%' as is_truth"),
    ]
    for i in range(20):
        out.append(
            _outcome(
                conn,
                "insert into p8_t values (:id, :v, :n, :d)",
                id=i,
                v=f"value {i}" if i % 3 else None,
                n=decimal.Decimal(i) / 8,
                d=datetime.date(2024, 1, 1) + datetime.timedelta(days=i),
            )
        )
    out += [
        _outcome(conn, "select * from p8_t where id >= :low order by id", low=15),
        _outcome(conn, "select :a::int + :b::int as sum, :s || '!' as s", a=40, b=2, s="hi"),
        _outcome(conn, "select 1/0"),
        _outcome(conn, "select * from p8_t where id = :id", id="not a number"),
        _outcome(conn, "insert into p8_t values (1, 'dup', 0, null)"),
        _outcome(conn, "select 'after the errors'"),
    ]
    # Transactions: commit, rollback, an error inside one, then rollback.
    conn.run("start transaction")
    conn.run("insert into p8_t values (100, 'committed', 1, null)")
    conn.run("commit")
    conn.run("start transaction")
    conn.run("insert into p8_t values (101, 'rolled back', 1, null)")
    conn.run("rollback")
    conn.run("start transaction")
    conn.run("insert into p8_t values (102, 'lost', 1, null)")
    out.append(_outcome(conn, "select 1/0"))
    out.append(_outcome(conn, "select 1"))  # in a failed transaction
    conn.run("rollback")
    out.append(_outcome(conn, "select id from p8_t where id >= 100 order by id"))
    stmt = conn.prepare("select v from p8_t where id = :id")
    out.append([stmt.run(id=i) for i in (1, 2, 3, 999)])
    stmt.close()
    return out


def test_pg8000_native(proxy, servers, oracle_dsn, both_equal) -> None:
    pg15 = servers[0]
    conn = _connect(proxy.port)
    try:
        got = scenario(conn)
    finally:
        conn.close()
    conn = _connect(pg15.port, pg15.host, "twinkly_oracle")
    try:
        want = scenario(conn)
    finally:
        conn.close()
    assert got == want
    assert got[3][0] == [[True]]
    errors = [o for o in got if isinstance(o, tuple) and o[0] == "error"]
    assert errors == [
        ("error", "22012"),
        ("error", "22P02"),
        ("error", "23505"),
        ("error", "22012"),
        ("error", "25P02"),
    ]
    assert got[-2][0] == [[100]]
    both_equal("select * from p8_t order by id")

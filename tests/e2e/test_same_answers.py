"""Every answer through Twinkly equals the answer of a direct connection to the truth:
column names and types, rows, command tags, row counts and errors, in text and binary."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.backends

QUERIES = [
    "select 1",
    "select 1::int2 as small, 2::int4 as medium, 9223372036854775807::int8 as big",
    "select 1.5::numeric(10,3), 'NaN'::numeric, -123456789012345678901234567890.0123456789",
    "select 1.5::float4, 2.25::float8, 'Infinity'::float8, '-Infinity'::float4, 'NaN'::float8",
    "select 'hello'::text, 'x'::varchar(5), 'c'::char(3), ''::text, 'quote''s'",
    "select 'héllo wörld ✓ 日本語 🐘'",
    "select '\\x00ff10'::bytea, ''::bytea, decode(repeat('ab', 5000), 'hex')",
    "select array[1, 2, 3], array['a', null, 'c'], '{{1,2},{3,4}}'::int[], '{}'::text[]",
    'select \'{"a": 1, "b": [true, null, 2.5]}\'::json, \'[1, "x"]\'::json',
    'select \'{"b": 2, "a": [1, 2.5, {"c": null}]}\'::jsonb, \'null\'::jsonb',
    "select '2024-02-29 12:34:56.789'::timestamp, 'infinity'::timestamp",
    "select '2024-02-29 12:34:56.789+02'::timestamptz, '1999-12-31 23:59:59Z'::timestamptz",
    "select '2024-01-01'::date, '12:34:56.5'::time, '12:34:56+05:30'::timetz",
    "select interval '1 year 2 months 3 days 04:05:06.7', interval '-1 day', interval '0'",
    "select null, null::int, null::text[], null::jsonb",
    "select true, false, null::bool",
    "select '123e4567-e89b-12d3-a456-426614174000'::uuid",
    "select '192.168.0.1/24'::inet, '10.0.0.0/8'::cidr, '08:00:2b:01:02:03'::macaddr",
    "select int4range(1, 10), '[2024-01-01,2024-02-01)'::daterange, 'empty'::int8range",
    "select point(1, 2), '((0,0),(1,1))'::box, 'B'::\"char\", 'pg_class'::regclass::oid",
    "select row(1, 'a', null)",
    "select g from generate_series(1, 1000) g",
    "select g, case when g % 2 = 0 then null else g end from generate_series(1, 10) g",
    "select * from generate_series(1, 3) g where false",
    "select",
    "select from generate_series(1, 3)",
    "values (1, 'a'), (2, 'b'), (3, null)",
    "select repeat('x', 1000000) as big_text",
    "with recursive t(n) as (select 1 union all select n + 1 from t where n < 100)"
    " select sum(n), count(*) from t",
    "select string_agg(g::text, ',') from generate_series(1, 2000) g",
    "select 'a' || null, coalesce(null, 'b'), nullif(1, 1)",
    "select current_setting('server_version_num')::int / 10000 as major",
    "show server_version",
    "select 1/0",
    "select * from no_such_table",
    "selec 1",
    "select 'tab\tnew\nline', E'back\\\\slash'",
    "create temporary table same_answers_t (x int)",
    "insert into same_answers_t select generate_series(1, 5)",
    "update same_answers_t set x = x + 1 where x > 2",
    "delete from same_answers_t where x = 1",
    "select x from same_answers_t order by x",
    "drop table same_answers_t",
]


def answer(conn: psycopg.Connection, sql: str, binary: bool) -> dict[str, Any]:
    try:
        cur = conn.execute(sql, binary=binary)
    except psycopg.Error as e:
        diag = e.diag
        return {
            "error": type(e).__name__,
            "sqlstate": e.sqlstate,
            "message": diag.message_primary,
            "detail": diag.message_detail,
            "hint": diag.message_hint,
            "position": diag.statement_position,
        }
    result = cur.pgresult
    assert result is not None
    return {
        "columns": [(c.name, c.type_code, c.display_size, c.internal_size) for c in cur.description]
        if cur.description is not None
        else None,
        "formats": [result.fformat(i) for i in range(result.nfields)],
        "rows": _loaded(cur),
        "raw": [
            [result.get_value(r, c) for c in range(result.nfields)] for r in range(result.ntuples)
        ]
        if result.ntuples < 5000
        else result.ntuples,
        "status": cur.statusmessage,
        "rowcount": cur.rowcount,
    }


def _loaded(cur: psycopg.Cursor) -> str | None:
    """Rows as Python objects, by repr (NaN != NaN); some values do not load (infinity)."""
    if cur.description is None:
        return None
    try:
        return repr(cur.fetchall())
    except psycopg.DataError as e:
        return f"cannot load: {e}"


@pytest.fixture(scope="module")
def connections(proxy, servers) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    through = psycopg.connect(proxy.dsn(), autocommit=True)
    direct = psycopg.connect(servers[0].dsn(sslmode="disable"), autocommit=True)
    with through, direct:
        yield through, direct


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("sql", QUERIES)
def test_same_answer_as_truth(connections, sql: str, binary: bool) -> None:
    through, direct = connections
    got = answer(through, sql, binary)
    want = answer(direct, sql, binary)
    assert got == want
    if "error" not in want and "rows" in want and want["rows"] is not None:
        assert want["formats"] == [int(binary)] * len(want["formats"])


def test_parameter_status_and_session_state(proxy, servers) -> None:
    """What libpq learns at login and from SET comes from the truth."""
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as through,
        psycopg.connect(servers[0].dsn(sslmode="disable"), autocommit=True) as direct,
    ):
        for name in (
            "server_version",
            "server_encoding",
            "client_encoding",
            "DateStyle",
            "integer_datetimes",
            "standard_conforming_strings",
            "TimeZone",
        ):
            assert through.info.parameter_status(name) == direct.info.parameter_status(name)
        assert through.info.server_version == direct.info.server_version
        for conn in (through, direct):
            conn.execute("set datestyle to 'SQL, DMY'")
            conn.execute("set timezone to 'Asia/Kathmandu'")
        for name in ("DateStyle", "TimeZone"):
            assert through.info.parameter_status(name) == direct.info.parameter_status(name)
        sql = "select '2024-02-29 12:34:56+00'::timestamptz::text, now() - now()"
        assert through.execute(sql).fetchall() == direct.execute(sql).fetchall()

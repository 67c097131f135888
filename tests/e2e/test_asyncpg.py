"""asyncpg through Twinkly: named prepared statements, Describe, binary rows, cursors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

pytestmark = pytest.mark.backends


def _proxy_params(proxy) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": proxy.port,
        "user": "twinkly",
        "password": "twinkly-pw",
        "database": "app",
        "timeout": 10,
    }


def _truth_params(servers, database: str = "app") -> dict[str, Any]:
    pg15 = servers[0]
    return {
        "host": pg15.host,
        "port": pg15.port,
        "user": "twinkly",
        "password": "twinkly-pw",
        "database": database,
        "ssl": False,
        "timeout": 10,
    }


def run(scenario: Callable[[asyncpg.Connection], Awaitable[Any]], **params: Any) -> Any:
    async def main() -> Any:
        conn = await asyncpg.connect(**params)
        try:
            return await scenario(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


def same_as_truth(proxy, servers, scenario) -> Any:
    got = run(scenario, **_proxy_params(proxy))
    want = run(scenario, **_truth_params(servers, "twinkly_oracle"))
    assert got == want
    return got


def test_prepared_statements(proxy, servers, oracle_dsn, both_equal) -> None:
    async def scenario(conn: asyncpg.Connection) -> list[Any]:
        await conn.execute("drop table if exists apg_prep")
        await conn.execute("create table apg_prep (id int primary key, v text, j jsonb)")
        insert = await conn.prepare("insert into apg_prep values ($1, $2, $3)")
        for i in range(50):
            await insert.fetch(i, f"value {i}", f'{{"i": {i}}}')
        select = await conn.prepare("select id, v, j from apg_prep where id % $1 = 0 order by id")
        out: list[Any] = [
            [tuple(r) for r in await select.fetch(7)],
            [tuple(r) for r in await select.fetch(25)],
            await select.fetchval(49),
            [(a.name, a.type.name) for a in select.get_attributes()],
            [t.name for t in select.get_parameters()],
        ]
        divide = await conn.prepare("select 100 / $1::int")
        try:
            await divide.fetchval(0)
        except asyncpg.DivisionByZeroError as e:
            out.append(("error", e.sqlstate))
        out.append(await divide.fetchval(4))
        try:
            await conn.prepare("select * from no_such_table")
        except asyncpg.UndefinedTableError as e:
            out.append(("error", e.sqlstate))
        out.append(await conn.fetchval("select count(*) from apg_prep"))
        return out

    got = same_as_truth(proxy, servers, scenario)
    assert got[-1] == 50 and got[-3] == 25
    both_equal("select * from apg_prep order by id")


def test_executemany(proxy, servers, oracle_dsn, both_equal) -> None:
    async def scenario(conn: asyncpg.Connection) -> list[Any]:
        await conn.execute("drop table if exists apg_many")
        await conn.execute("create table apg_many (id int primary key, v text, x float8)")
        await conn.executemany(
            "insert into apg_many values ($1, $2, $3)",
            [(i, f"v{i}", i / 3) for i in range(2000)],
        )
        out: list[Any] = []
        try:
            await conn.executemany(
                "insert into apg_many values ($1, $2, $3)", [(5000, "new", 0.0), (1, "dup", 0.0)]
            )
        except asyncpg.UniqueViolationError as e:
            out.append(("error", e.sqlstate))
        out.append(tuple(await conn.fetchrow("select count(*), sum(id), max(v) from apg_many")))
        return out

    got = same_as_truth(proxy, servers, scenario)
    assert got == [("error", "23505"), (2000, sum(range(2000)), "v999")]
    both_equal("select * from apg_many order by id")


def test_large_result_equals_direct_answer(proxy, servers, oracle_dsn) -> None:
    sql = "select g, md5(g::text), g * 0.5 as half from generate_series(1, 200000) g"

    async def scenario(conn: asyncpg.Connection) -> list[tuple]:
        return [tuple(r) for r in await conn.fetch(sql)]

    got = same_as_truth(proxy, servers, scenario)
    assert len(got) == 200000
    assert got[-1][0] == 200000


def test_transactions(proxy, servers, oracle_dsn, both_equal) -> None:
    async def scenario(conn: asyncpg.Connection) -> list[Any]:
        await conn.execute("drop table if exists apg_tx")
        await conn.execute("create table apg_tx (id int primary key, v text)")
        out: list[Any] = []
        async with conn.transaction():
            await conn.execute("insert into apg_tx values (1, 'committed')")
        try:
            async with conn.transaction():
                await conn.execute("insert into apg_tx values (2, 'rolled back')")
                raise RuntimeError("leave the block")
        except RuntimeError:
            out.append("rolled back")
        try:
            async with conn.transaction():
                await conn.execute("insert into apg_tx values (3, 'also rolled back')")
                await conn.execute("select 1/0")
        except asyncpg.DivisionByZeroError:
            out.append("division by zero")
        async with conn.transaction():
            await conn.execute("insert into apg_tx values (4, 'outer')")
            try:
                async with conn.transaction():  # a savepoint
                    await conn.execute("insert into apg_tx values (5, 'inner')")
                    await conn.execute("insert into apg_tx values (4, 'dup')")
            except asyncpg.UniqueViolationError:
                out.append("savepoint rolled back")
        tx = conn.transaction(isolation="serializable", readonly=True)
        await tx.start()
        out.append(await conn.fetchval("show transaction_isolation"))
        await tx.rollback()
        out.append([tuple(r) for r in await conn.fetch("select * from apg_tx order by id")])
        return out

    got = same_as_truth(proxy, servers, scenario)
    assert got[-1] == [(1, "committed"), (4, "outer")]
    assert got[-2] == "serializable"
    both_equal("select * from apg_tx order by id")


def test_cursors_in_a_transaction(proxy, servers, oracle_dsn) -> None:
    sql = "select g, repeat('x', g % 50) from generate_series(1, $1) g"

    async def scenario(conn: asyncpg.Connection) -> list[Any]:
        out: list[Any] = []
        async with conn.transaction():
            cursor = await conn.cursor(sql, 10000)
            batches = []
            while batch := await cursor.fetch(1234):
                batches.append([tuple(r) for r in batch])
            out.append([len(b) for b in batches])
            out.append(batches[-1][-1])
            cursor = await conn.cursor(sql, 500)
            await cursor.forward(100)
            out.append(tuple(await cursor.fetchrow()))
            rows = [tuple(r) async for r in conn.cursor(sql, 3000, prefetch=250)]
            out.append((len(rows), rows[0], rows[-1]))
        try:
            async with conn.transaction():
                async for _row in conn.cursor(
                    "select 1 / (g - 300) from generate_series(1, 400) g"
                ):
                    pass
        except asyncpg.DivisionByZeroError:
            out.append("division by zero")
        out.append(await conn.fetchval("select 'usable'"))
        return out

    got = same_as_truth(proxy, servers, scenario)
    assert got[0] == [1234] * 8 + [128]
    assert got[2] == (101, "x" * 1)
    assert got[3][0] == 3000

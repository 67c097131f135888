"""When the two servers disagree (one has a table the other lacks), the client still gets
exactly the truth's answers, and the session stays in step for what comes next."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

pytestmark = pytest.mark.backends


@pytest.fixture
def lopsided(proxy) -> Iterator[None]:
    """truth_only exists only on the truth, target_only only on the target, shared on both."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("drop table if exists shared")
        conn.execute("create table shared (n int)")
    for dsn, name in ((proxy.truth_dsn, "truth_only"), (proxy.target_dsn, "target_only")):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"drop table if exists {name}")
            conn.execute(f"create table {name} (n int)")
    yield
    for dsn, name in ((proxy.truth_dsn, "truth_only"), (proxy.target_dsn, "target_only")):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"drop table if exists {name}")


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(f"select count(*) from {table}").fetchone()[0]


def test_target_fails_where_truth_succeeds(proxy, lopsided, both_equal) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("insert into truth_only values (1)")  # simple protocol
        conn.execute("insert into truth_only values (%s)", (2,))  # extended
        conn.execute("insert into truth_only values (%s)", (3,), prepare=True)
        with conn.cursor() as cur, cur.copy("copy truth_only from stdin") as copy:
            for n in range(4, 104):
                copy.write_row((n,))
        assert conn.execute("select count(*) from truth_only").fetchone() == (103,)
        with conn.pipeline():
            for n in range(10):
                conn.execute("insert into truth_only values (%s)", (n,))
                conn.execute("insert into shared values (%s)", (n,))
        with conn.transaction():  # the target's transaction fails, the truth's commits
            conn.execute("insert into shared values (100)")
            conn.execute("insert into truth_only values (100)")
            conn.execute("insert into shared values (101)")
        # In step again: a fresh write reaches both servers.
        conn.execute("insert into shared values (1000)")
        assert conn.execute("select 'in step'").fetchone() == ("in step",)
    assert _count(proxy.truth_dsn, "truth_only") == 114
    truth_shared = both_equal("select count(*) from shared where n = 1000")
    assert truth_shared == [(1,)]


def test_truth_fails_where_target_succeeds(proxy, lopsided, both_equal) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("insert into target_only values (1)")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("insert into target_only values (%s)", (2,))
        # The target enters COPY mode, the truth does not: the target's COPY must be
        # ended for it, or it would wait for data forever.
        with (
            pytest.raises(psycopg.errors.UndefinedTable),
            conn.cursor() as cur,
            cur.copy("copy target_only from stdin") as copy,
        ):
            copy.write_row((3,))
        assert conn.execute("select 'after copy'").fetchone() == ("after copy",)
        conn.execute("insert into shared values (%s)", (7,))
        with conn.cursor() as cur, cur.copy("copy shared from stdin") as copy:
            for n in range(50):
                copy.write_row((n,))
        with conn.cursor() as cur, cur.copy("copy (select 1) to stdout") as copy:
            assert b"".join(bytes(c) for c in copy) == b"1\n"
    both_equal("select count(*), sum(n) from shared")
    assert _count(proxy.target_dsn, "target_only") <= 2


def test_copy_refused_by_truth_while_the_target_is_slow(proxy, lopsided, both_equal) -> None:
    """The truth refuses a COPY FROM STDIN at once and the client moves on; the target,
    held back by a lock, enters COPY mode only later. The client's next messages must not
    reach the target while it waits for COPY data (it would drop the connection)."""
    import threading

    with psycopg.connect(proxy.target_dsn) as locker:
        locker.execute("lock table target_only in access exclusive mode")
        release = threading.Timer(0.5, locker.rollback)
        release.start()
        try:
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                with (
                    pytest.raises(psycopg.errors.UndefinedTable),
                    conn.cursor() as cur,
                    cur.copy("copy target_only from stdin") as copy,
                ):
                    copy.write_row((1,))
                conn.execute("insert into shared values (%s)", (1,))
                conn.execute("insert into shared values (2)")
                release.join()
                conn.execute("insert into shared values (3)")
                assert conn.execute("select count(*) from shared").fetchone() == (3,)
        finally:
            release.join()
    both_equal("select count(*), sum(n) from shared")


def test_target_only_error_in_extended_copy(proxy, lopsided, servers, both_equal) -> None:
    """asyncpg's COPY uses the extended protocol: COPY FROM STDIN followed by Sync."""
    import asyncio

    import asyncpg

    async def main() -> list:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=proxy.port, user="twinkly", password="twinkly-pw",
            database="app", timeout=10,
        )  # fmt: skip
        try:
            out = [await conn.copy_records_to_table("shared", records=[(n,) for n in range(300)])]
            try:
                await conn.copy_records_to_table("target_only", records=[(1,), (2,)])
            except asyncpg.UndefinedTableError as e:
                out.append(e.sqlstate)
            out.append(await conn.copy_records_to_table("truth_only", records=[(5,), (6,)]))
            out.append(await conn.fetchval("select count(*) from shared"))
            return out
        finally:
            await conn.close()

    assert asyncio.run(main()) == ["COPY 300", "42P01", "COPY 2", 300]
    both_equal("select count(*), sum(n) from shared")

"""comparison.fail-on-differences on the wire: the SQLSTATE and DETAIL the client gets,
and the transaction state of the client and of both databases afterwards."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = pytest.mark.backends


@pytest.fixture(scope="module")
def strict(servers, tmp_path_factory):
    from proxyproc import start_proxy_process

    workdir = tmp_path_factory.mktemp("strict")
    proxy = start_proxy_process(*servers, workdir, extra="comparison.fail-on-differences = true")
    try:
        yield proxy
    finally:
        proxy.stop()
    assert not proxy.bad_log_lines(), proxy.log_text()


def direct(dsn: str, *statements: str) -> list:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [
            conn.execute(s).fetchall()
            if s.lstrip().startswith("select")
            else conn.execute(s) and None
            for s in statements
        ]


@pytest.fixture
def tables(strict):
    for dsn in (strict.truth_dsn, strict.target_dsn):
        direct(
            dsn,
            "drop table if exists fod",
            "create table fod (id int primary key, v text)",
            "insert into fod values (1, 'a'), (2, 'b')",
            "drop table if exists only_truth",
            "drop table if exists kept",
            "create table kept (n int)",
        )
    direct(strict.truth_dsn, "create table only_truth (n int)")
    direct(strict.target_dsn, "update fod set v = 'other' where id = 2")
    return strict


def counts(proxy, table: str) -> tuple[int, int]:
    return tuple(
        direct(dsn, f"select count(*) from {table}")[0][0][0]
        for dsn in (proxy.truth_dsn, proxy.target_dsn)
    )


def test_equal_answers_pass_untouched(tables) -> None:
    with psycopg.connect(tables.dsn(), autocommit=True) as conn:
        assert conn.execute("select v from fod where id = 1").fetchall() == [("a",)]
        conn.execute("insert into kept values (1)")  # a wrapped write that matches
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert counts(tables, "kept") == (1, 1)


def test_mismatching_read_in_autocommit_gives_tw001(tables) -> None:
    with psycopg.connect(tables.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("select v from fod where id = 2").fetchall()
        assert caught.value.sqlstate == "TW001"
        assert "pg15" in str(caught.value) and "pg18" in str(caught.value)
        assert "other" in (caught.value.diag.message_detail or "")
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("select 1").fetchone() == (1,)  # the session goes on


def test_one_sided_write_in_autocommit_is_rolled_back_on_both(tables) -> None:
    with psycopg.connect(tables.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("insert into only_truth values (1)")
        assert caught.value.sqlstate == "TW002"
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert direct(tables.truth_dsn, "select count(*) from only_truth")[0] == [(0,)]


def test_mismatch_inside_a_transaction_aborts_it_on_both(tables) -> None:
    with psycopg.connect(tables.dsn()) as conn:
        conn.execute("insert into kept values (7)")
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("select v from fod where id = 2").fetchall()
        assert caught.value.sqlstate == "TW001"
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
    assert counts(tables, "kept") == (0, 0)


def test_commit_after_a_mismatch_rolls_back_on_both(tables) -> None:
    with psycopg.connect(tables.dsn(), autocommit=True) as conn:
        conn.execute("begin")
        conn.execute("insert into kept values (8)")
        with pytest.raises(psycopg.Error):
            conn.execute("select v from fod where id = 2").fetchall()
        assert conn.execute("commit").statusmessage == "ROLLBACK"
    assert counts(tables, "kept") == (0, 0)


def test_extended_protocol_and_pipelines(tables) -> None:
    with psycopg.connect(tables.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("insert into only_truth values (%s)", (5,))
        assert caught.value.sqlstate == "TW002"
        with conn.pipeline():
            first = conn.execute("select v from fod where id = %s", (1,))
            conn.execute("insert into kept values (%s)", (3,))
            second = conn.execute("select %s::int + 1", (41,))
        assert first.fetchall() == [("a",)]
        assert second.fetchall() == [(42,)]
    assert direct(tables.truth_dsn, "select count(*) from only_truth")[0] == [(0,)]
    assert counts(tables, "kept") == (1, 1)


def test_copy_and_large_results_stream(tables) -> None:
    with psycopg.connect(tables.dsn(), autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy("copy kept from stdin") as copy:
            for i in range(100):
                copy.write_row((i,))
        rows = conn.execute("select g from generate_series(1, 300000) g").fetchall()
        assert len(rows) == 300000  # beyond the hold cap: streamed, not refused
    assert counts(tables, "kept") == (100, 100)

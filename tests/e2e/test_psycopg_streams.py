"""psycopg 3 features where messages do not come one request, one answer: pipelines, COPY,
asynchronous notifications and cancel requests."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from proxyproc import assert_cancels_a_sleep, same_as_truth

pytestmark = pytest.mark.backends


def test_pipeline_with_an_error_in_the_middle(proxy, oracle_dsn, both_equal) -> None:
    def scenario(conn: psycopg.Connection) -> list[Any]:
        out: list[Any] = []
        conn.execute("drop table if exists pipe_t")
        conn.execute("create table pipe_t (id int primary key, v text)")
        try:
            with conn.pipeline() as pipeline, conn.cursor() as cur:
                for i in range(100):
                    cur.execute("insert into pipe_t values (%s, %s)", (i, f"v{i}"))
                pipeline.sync()  # the first 100 are committed here
                for i in range(100, 150):
                    cur.execute("insert into pipe_t values (%s, %s)", (i, f"v{i}"))
                cur.execute("insert into pipe_t values (%s, 'duplicate')", (7,))
                for i in range(150, 200):  # skipped by the server until the next Sync
                    cur.execute("insert into pipe_t values (%s, %s)", (i, f"v{i}"))
        except psycopg.errors.UniqueViolation as e:
            out.append(("error", e.sqlstate))
        out.append(conn.execute("select count(*), max(id) from pipe_t").fetchone())
        # The connection goes on, in and out of pipeline mode.
        with conn.pipeline():
            cursors = [
                conn.execute("select %s::int * 2, %s::text", (i, str(i))) for i in range(200)
            ]
            cursors.append(conn.execute("select count(*) from pipe_t"))
        out.append([c.fetchall() for c in cursors])
        with conn.pipeline() as pipeline:
            first = conn.execute("select 1")
            pipeline.sync()
            try:
                conn.execute("select 1/0")
                pipeline.sync()
            except psycopg.errors.DivisionByZero:
                out.append("division by zero")
            last = conn.execute("select 'after'")
        out += [first.fetchall(), last.fetchall()]
        out.append(conn.execute("select 'out of the pipeline'").fetchall())
        return out

    got = same_as_truth(proxy, oracle_dsn, scenario, autocommit=True)
    assert got[0] == ("error", "23505")
    assert got[1] == (100, 99)
    assert got[2][-1] == [(100,)]
    both_equal("select * from pipe_t order by id")


def test_pipeline_in_a_transaction(proxy, oracle_dsn, both_equal) -> None:
    def scenario(conn: psycopg.Connection) -> list[Any]:
        conn.execute("drop table if exists pipe_tx")
        conn.execute("create table pipe_tx (id int primary key)")
        conn.commit()
        with conn.pipeline():
            for i in range(300):
                conn.execute("insert into pipe_tx values (%s)", (i,))
            conn.commit()
            for i in range(300, 400):
                conn.execute("insert into pipe_tx values (%s)", (i,))
            conn.rollback()
        return conn.execute("select count(*), sum(id) from pipe_tx").fetchall()

    assert same_as_truth(proxy, oracle_dsn, scenario) == [(300, sum(range(300)))]
    both_equal("select count(*), sum(id) from pipe_tx")


def test_copy_from_stdin_and_to_stdout(proxy, oracle_dsn, both_equal) -> None:
    def scenario(conn: psycopg.Connection) -> list[Any]:
        out: list[Any] = []
        conn.execute("drop table if exists copy_t")
        conn.execute("create table copy_t (id int primary key, v text, x numeric)")
        with conn.cursor() as cur:
            with cur.copy("copy copy_t (id, v, x) from stdin") as copy:
                for i in range(20000):
                    copy.write_row((i, f"row\t{i}" if i % 10 else None, i / 4))
            out.append(cur.rowcount)
            with cur.copy("copy copy_t from stdin (format csv)") as copy:
                copy.write(b'20000,"quoted, comma",1.5\n20001,,2\n')
            out.append(cur.rowcount)
            try:
                with cur.copy("copy copy_t from stdin") as copy:
                    copy.write(b"30000\tok\t1\nnot-a-number\tbad\t2\n")
            except psycopg.errors.InvalidTextRepresentation as e:
                out.append(("error", e.sqlstate))
            with cur.copy("copy (select * from copy_t order by id) to stdout") as copy:
                text = b"".join(bytes(chunk) for chunk in copy)
            out.append((len(text), text[:200], text[-200:]))
            with cur.copy(
                "copy (select * from copy_t order by id) to stdout (format binary)"
            ) as copy:
                copy.set_types(["int4", "text", "numeric"])
                rows = list(copy.rows())
            out.append((len(rows), rows[:3], rows[-2:]))
            with cur.copy(
                "copy (select id from copy_t where id < 5 order by id) to stdout"
            ) as copy:
                pieces = []
                while data := copy.read():
                    pieces.append(bytes(data))
            out.append(b"".join(pieces))
        out.append(conn.execute("select count(*) from copy_t").fetchone())
        return out

    got = same_as_truth(proxy, oracle_dsn, scenario, autocommit=True)
    assert got[:3] == [20000, 2, ("error", "22P02")]
    assert got[4][0] == 20002
    assert got[5] == b"0\n1\n2\n3\n4\n"
    both_equal("select * from copy_t order by id")


def test_listen_notify(proxy) -> None:
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as listener,
        psycopg.connect(proxy.dsn(), autocommit=True) as notifier,
    ):
        listener.execute("listen twinkly_channel")
        notifier_pid = notifier.execute("select pg_backend_pid()").fetchone()[0]
        notifier.execute("notify twinkly_channel, 'hello'")
        with notifier.transaction():
            notifier.execute("select pg_notify('twinkly_channel', 'from a transaction')")
        notifier.execute("notify other_channel, 'not for us'")
        got = [(n.channel, n.payload, n.pid) for n in listener.notifies(timeout=5, stop_after=2)]
        assert got == [
            ("twinkly_channel", "hello", notifier_pid),
            ("twinkly_channel", "from a transaction", notifier_pid),
        ]
        # A notification that arrives while the listener runs a query is not lost either.
        received: list[str] = []
        listener.add_notify_handler(lambda n: received.append(n.payload))
        notifier.execute("notify twinkly_channel, 'during a query'")
        time.sleep(0.2)
        assert listener.execute("select 42").fetchone() == (42,)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            listener.execute("select 1")
            time.sleep(0.05)
        assert received == ["during a query"]
        listener.execute("unlisten *")


def _sleepers(dsn: str, application_name: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "select pid, state, query from pg_stat_activity"
            " where application_name = %s and query like '%%pg_sleep%%' and state = 'active'",
            (application_name,),
        ).fetchall()


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel_a_running_query(proxy, method: str) -> None:
    application = f"twinkly-e2e-{method}"
    with psycopg.connect(proxy.dsn(application_name=application), autocommit=True) as conn:
        assert_cancels_a_sleep(conn, getattr(conn, method))
        assert conn.execute("select 'still usable'").fetchone() == ("still usable",)
        # Neither backend is still sleeping: the cancel reached both.
        deadline = time.monotonic() + 3
        while True:
            running = {
                "truth": _sleepers(proxy.truth_dsn, application),
                "target": _sleepers(proxy.target_dsn, application),
            }
            if not any(running.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert running == {"truth": [], "target": []}
        # And the session still works on both sides: a write reaches both databases.
        conn.execute("create temp table after_cancel (x int)")
        conn.execute("insert into after_cancel values (1)")
        assert conn.execute("select count(*) from after_cancel").fetchone() == (1,)


def test_cancel_with_nothing_running_is_harmless(proxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.cancel()
        time.sleep(0.2)
        assert conn.execute("select 1").fetchone() == (1,)

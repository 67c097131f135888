"""Columns each server fills in for itself (defaults calling now(), serial keys, UPDATE
... SET x = now(), triggers, generated columns over them): reads of them are noise, not
mismatches, in the simple and the extended protocol; a real difference in another
column of the same rows is still one result_mismatch per read, naming only that column."""

from __future__ import annotations

import asyncio
import threading

import asyncpg
import psycopg
import pytest
from proxyproc import start_proxy_process
from test_comparison import MISMATCHES, Events, direct, kinds

pytestmark = pytest.mark.backends

MODES = ("simple", "prepared", "asyncpg")
READS = 3


@pytest.fixture(scope="module")
def volatile(servers, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("volatile")
    proxy = start_proxy_process(
        *servers, workdir, extra='comparison.volatile-column-list = ["listed.stamp"]'
    )
    try:
        yield proxy, Events(workdir / "reports" / "twinkly-events.jsonl")
    finally:
        proxy.stop()
    assert not proxy.bad_log_lines(), proxy.log_text()


def run(proxy, *statements: str) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True, cursor_factory=psycopg.ClientCursor) as c:
        for sql in statements:
            c.execute(sql)


def read(proxy, sql: str, mode: str, times: int = READS) -> list:
    """Run one SELECT ``times`` times through Twinkly with the given protocol."""
    if mode == "asyncpg":

        async def fetch() -> list:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=proxy.port, user="twinkly", password="twinkly-pw",
                database="app", ssl=False, timeout=10,
            )  # fmt: skip
            try:
                return [[tuple(r) for r in await conn.fetch(sql)] for _ in range(times)]
            finally:
                await conn.close()

        return asyncio.run(fetch())
    options = {"cursor_factory": psycopg.ClientCursor} if mode == "simple" else {}
    if mode == "prepared":
        options["prepare_threshold"] = 0
    with psycopg.connect(proxy.dsn(), autocommit=True, **options) as conn:
        return [conn.execute(sql).fetchall() for _ in range(times)]


def no_mismatch_over_reads(proxy, events: Events, sql: str, column: str) -> list[dict]:
    """Repeated reads in every protocol: noise naming ``column``, never a mismatch."""
    found = []
    for mode in MODES:
        read(proxy, sql, mode)
        fresh = events.new(settle=0.8)
        assert not [e for e in fresh if e["kind"] in MISMATCHES], (mode, fresh)
        noise = [e for e in fresh if e["kind"] == "noise"]
        assert len(noise) == READS, (mode, kinds(fresh))
        assert all(column in e["reason"] for e in noise), noise[0]["reason"]
        found += noise
    return found


def one_mismatch_per_read(proxy, events: Events, sql: str, column: str) -> None:
    for mode in MODES:
        read(proxy, sql, mode)
        fresh = events.new(settle=0.8)
        mismatches = [e for e in fresh if e["kind"] in MISMATCHES]
        assert len(mismatches) == READS, (mode, kinds(fresh))
        for event in mismatches:
            assert event["kind"] == "result_mismatch"
            assert {c for d in event["differences"] for c in d["columns"]} == {column}, event
            assert "compared apart" in event["reason"]


def volatile_write(events: Events, column: str) -> dict:
    """The volatile_write event that recorded ``column`` (waiting for the catalog)."""
    for _ in range(3):
        for event in events.all():
            if event["kind"] == "volatile_write" and any(
                f"{c['table']}.{c['column']}" == column for c in event["columns"]
            ):
                return event
        events.wait_for("volatile_write")
    raise AssertionError(f"no volatile_write for {column}: {kinds(events.all())}")


def test_defaults_calling_volatile_functions(volatile) -> None:
    proxy, events = volatile
    run(
        proxy,
        "drop table if exists vd",
        "create table vd (id int primary key, v text, ts timestamptz default now(),"
        " ct timestamptz default clock_timestamp(), u uuid default gen_random_uuid(),"
        " r float8 default random())",
        "insert into vd (id, v) select g, 'v' || g from generate_series(1, 1000) g",
    )
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:  # and row by row, bound
        for i in range(1001, 1021):
            conn.execute("insert into vd (id, v) values (%s, %s)", (i, f"v{i}"))
    written = volatile_write(events, "vd.ts")
    assert {c["column"] for c in written["columns"]} == {"ts", "ct", "u", "r"}
    events.new()
    assert not [e for e in events.all() if e["kind"] in MISMATCHES]
    sql = "select * from vd where id between 5 and 8 or id between 1010 and 1012 order by id"
    noise = no_mismatch_over_reads(proxy, events, sql, "vd.ts: default now()")
    assert all(e["caused_by"] == written["id"] for e in noise)
    assert f"(event {written['id']})" in noise[0]["reason"]
    assert "vd.u: default gen_random_uuid()" in noise[0]["reason"]
    direct(proxy.target_dsn, "update vd set v = 'changed' where id = 7")
    one_mismatch_per_read(proxy, events, sql, "v")


@pytest.mark.parametrize("key", ["serial", "int generated always as identity"])
def test_sequence_keys_under_concurrent_inserts(volatile, key: str) -> None:
    proxy, events = volatile
    table = "ks" if key == "serial" else "ki"
    run(proxy, f"drop table if exists {table}", f"create table {table} (id {key}, who int, n int)")

    def insert(who: int) -> None:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            for n in range(25):
                conn.execute(f"insert into {table} (who, n) values (%s, %s)", (who, n))

    threads = [threading.Thread(target=insert, args=(who,)) for who in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    volatile_write(events, f"{table}.id")
    events.new()
    sql = f"select * from {table} order by id"
    noise = no_mismatch_over_reads(proxy, events, sql, f"{table}.id: a sequence-generated key")
    assert "rows matched on their other columns" in noise[0]["reason"]
    direct(proxy.target_dsn, f"update {table} set n = -1 where who = 3 and n = 5")
    one_mismatch_per_read(proxy, events, sql, "n")


def test_update_set_now(volatile) -> None:
    proxy, events = volatile
    run(
        proxy,
        "drop table if exists vu",
        "create table vu (id int primary key, v text, updated_at timestamptz)",
        "insert into vu select g, 'v' || g, '2020-01-01' from generate_series(1, 50) g",
        "update vu set v = v || '!', updated_at = now() where id <= 20",
    )
    written = volatile_write(events, "vu.updated_at")
    events.new()
    sql = "select id, v, updated_at from vu where id between 15 and 25 order by id"
    noise = no_mismatch_over_reads(proxy, events, sql, "vu.updated_at: set to now() by UPDATE")
    assert noise[0]["caused_by"] == written["id"]
    direct(proxy.target_dsn, "update vu set v = 'changed' where id = 22")
    one_mismatch_per_read(proxy, events, sql, "v")


def test_trigger_that_stamps_rows(volatile) -> None:
    proxy, events = volatile
    run(
        proxy,
        "drop table if exists vt",
        "create table vt (id int primary key, v text, stamped_at timestamptz)",
        "create or replace function vt_stamp() returns trigger language plpgsql as"
        " $$ begin new.stamped_at := clock_timestamp(); return new; end $$",
        "create trigger vt_stamp before insert or update on vt"
        " for each row execute function vt_stamp()",
        "insert into vt select g, 'v' || g from generate_series(1, 30) g",
    )
    events.new(settle=1.0)  # the catalog of vt is read after its first write
    sql = "select * from vt where id <= 10 order by id"
    noise = no_mismatch_over_reads(proxy, events, sql, "vt.stamped_at: set by trigger vt_stamp")
    (observed,) = [e for e in events.all() if e["kind"] == "volatile_write"
                   and e["columns"][0]["table"] == "vt"]  # fmt: skip
    assert all(e["caused_by"] == observed["id"] for e in noise)
    direct(proxy.target_dsn, "alter table vt disable trigger user",
           "update vt set v = 'changed' where id = 4")  # fmt: skip
    one_mismatch_per_read(proxy, events, sql, "v")


def test_generated_column_over_a_volatile_default(volatile) -> None:
    proxy, events = volatile
    run(
        proxy,
        "drop table if exists vg",
        "create table vg (id int primary key, v text, r float8 default random(),"
        " doubled float8 generated always as (r * 2) stored)",
        "insert into vg (id, v) select g, 'v' || g from generate_series(1, 40) g",
    )
    volatile_write(events, "vg.doubled")
    events.new()
    sql = "select id, v, doubled from vg order by id"
    no_mismatch_over_reads(proxy, events, sql, "vg.doubled: generated always as")
    direct(proxy.target_dsn, "update vg set v = 'changed' where id = 9")
    one_mismatch_per_read(proxy, events, sql, "v")


def test_configured_column(volatile) -> None:
    proxy, events = volatile
    run(proxy, "drop table if exists listed", "create table listed (id int, stamp text)",
        "insert into listed values (1, 'a'), (2, 'b')")  # fmt: skip
    direct(proxy.target_dsn, "update listed set stamp = 'other'")
    events.new()
    noise = no_mismatch_over_reads(
        proxy, events, "select * from listed order by id", "listed.stamp"
    )
    assert "comparison.volatile-column-list" in noise[0]["reason"]


def test_server_identity_settings(volatile) -> None:
    proxy, events = volatile
    events.new()
    for mode in ("simple", "prepared"):
        for sql in ("show port", "show data_directory", "select current_setting('port')"):
            read(proxy, sql, mode, times=1)
    fresh = events.new(settle=0.8)
    assert not [e for e in fresh if e["kind"] in MISMATCHES], fresh
    assert kinds(fresh).count("noise") == 6

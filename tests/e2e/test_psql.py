"""psql through Twinkly prints exactly what psql prints against the source of truth."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devtools.sandbox import Server

pytestmark = pytest.mark.backends

PSQL = Path("/usr/lib/postgresql/15/bin/psql")

SCRIPT = r"""
create table psql_t (id int primary key, name text, amount numeric(10,2), created date);
insert into psql_t values (1, 'one', 1.50, '2024-01-01'), (2, 'two', NULL, '2024-02-29');
select * from psql_t order by id;
select 1/0;
selec 1;
select * from no_such_table;
insert into psql_t values (1, 'duplicate', 0, null);
begin;
insert into psql_t values (3, 'three', 3, '2024-03-03');
select 1/0;
insert into psql_t values (4, 'four', 4, null);
rollback;
select count(*) from psql_t;
select 1 as a \; select 1/0 \; select 3 as c;
begin;
insert into psql_t values (5, 'five', 5.55, '2024-05-05');
savepoint s1;
insert into psql_t values (5, 'dup', 0, null);
rollback to savepoint s1;
insert into psql_t values (6, 'six', 6, null);
commit;
copy psql_t (id, name, amount, created) from stdin;
10	ten	10.00	2024-10-10
11	eleven	\N	\N
\.
\copy psql_t (id, name, amount, created) from 'in.tsv'
\copy psql_t to 'out.tsv'
\copy (select id, name from psql_t where id > 100 order by id) to 'out.csv' (format csv, header)
\copy psql_t from 'missing-file.tsv'
\copy psql_t (id, name) from 'bad.tsv'
copy psql_t (id, name) from stdin;
50	fifty
not-a-number	oops
\.
select id, name, amount, created from psql_t order by id;
do $$ begin raise notice 'hello from plpgsql %', 42; end $$;
update psql_t set amount = amount * 2 where amount is not null;
delete from psql_t where id = 2;
\d psql_t
\x on
select * from psql_t where id = 1;
\x off
select array[1,2] as arr, '{"a": 1}'::jsonb as j, interval '1 day 02:03' as i, null::text as n;
select where false;
select;
;
\echo done
select g, repeat('ab', g) from generate_series(1, 5) g;
"""

IN_TSV = "".join(f"{i}\tname {i}\t{i}.25\t2024-06-{i - 100:02d}\n" for i in range(101, 121))
BAD_TSV = "200\tfine\n201\tfine too\nbroken\tline\n"


def _run_psql(dsn: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run the script with ON_ERROR_STOP=0 from ``workdir`` (relative \\copy paths)."""
    workdir.mkdir()
    (workdir / "script.sql").write_text(SCRIPT)
    (workdir / "in.tsv").write_text(IN_TSV)
    (workdir / "bad.tsv").write_text(BAD_TSV)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", PGCONNECT_TIMEOUT="10")
    cmd = [str(PSQL), "-X", "-v", "ON_ERROR_STOP=0", "-d", dsn, "-f", "script.sql"]
    return subprocess.run(
        cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_psql_script_matches_truth(
    fresh_db: None, proxy, servers: tuple[Server, Server], tmp_path: Path, both_equal
) -> None:
    pg15, _ = servers
    pg15.reset_database("psql_direct")
    direct = _run_psql(pg15.dsn(dbname="psql_direct", sslmode="disable"), tmp_path / "direct")
    proxied = _run_psql(proxy.dsn(), tmp_path / "proxied")

    # The script really did exercise errors, notices and COPY on the truth.
    assert "ERROR:  division by zero" in direct.stderr
    assert "NOTICE:  hello from plpgsql 42" in direct.stderr
    assert "COPY 20" in direct.stdout and "done" in direct.stdout
    assert direct.returncode == 0, direct.stderr  # ON_ERROR_STOP=0: errors do not stop psql

    assert proxied.stdout == direct.stdout
    assert proxied.stderr == direct.stderr
    assert proxied.returncode == direct.returncode
    for name in ("out.tsv", "out.csv"):
        assert (tmp_path / "proxied" / name).read_text() == (tmp_path / "direct" / name).read_text()
    assert len((tmp_path / "proxied" / "out.tsv").read_text().splitlines()) == 26

    # Both databases behind the proxy hold the same rows, and the same as the direct run.
    rows = both_equal("select * from psql_t order by id")
    direct_rows = _direct_rows(pg15)
    assert rows == direct_rows
    assert [r[0] for r in rows] == [1, 5, 6, 10, 11, *range(101, 121)]


def _direct_rows(pg15: Server) -> list[tuple]:
    import psycopg

    with psycopg.connect(pg15.dsn(dbname="psql_direct", sslmode="disable")) as conn:
        return conn.execute("select * from psql_t order by id").fetchall()


def test_psql_copy_round_trip(fresh_db: None, proxy, tmp_path: Path, both_equal) -> None:
    """\\copy to a file through the proxy, then \\copy it back into another table."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    script = r"""
create table copy_src as
  select g as id, md5(g::text) as h, g * 1.5 as x, date '2024-01-01' + g as d,
         case when g % 7 = 0 then null else 'tab	and \ back' end as odd
  from generate_series(1, 5000) g;
create table copy_dst (like copy_src);
\copy copy_src to 'dump.tsv'
\copy copy_dst from 'dump.tsv'
\copy (select * from copy_src order by id) to 'dump.csv' with (format csv)
select count(*) from copy_dst;
"""
    (tmp_path / "s.sql").write_text(script)
    cmd = [str(PSQL), "-X", "-v", "ON_ERROR_STOP=1", "-d", proxy.dsn(), "-f", "s.sql"]
    result = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "COPY 5000" in result.stdout
    assert len((tmp_path / "dump.tsv").read_text().splitlines()) == 5000
    assert len((tmp_path / "dump.csv").read_text().splitlines()) == 5000
    src = both_equal("select id, h, x, odd from copy_src order by id")
    dst = both_equal("select id, h, x, odd from copy_dst order by id")
    assert src == dst and len(src) == 5000

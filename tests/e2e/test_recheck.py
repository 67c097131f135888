"""``twinkly recheck``: re-running repro bundles on the two real servers of the sandbox.

The bundles are written by :class:`BundleWriter` from hand-made events, exactly as the proxy
would write them; the tables are made directly on each server, one value apart.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from twinkly.__main__ import main
from twinkly.cli.recheck import COULD_NOT_RUN, NOW_EQUAL, recheck_bundle
from twinkly.report.bundles import BundleWriter
from twinkly.report.events import make_event
from twinkly.wire.backend import Column

pytestmark = pytest.mark.backends

SELECT = "select * from recheck_t where id = $1"


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def rows(dsn: str, sql: str = "select id, v from recheck_t order by id") -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def dsns(servers) -> Iterator[tuple[str, str]]:
    """recheck_t on both servers, row 2 different on the target; recheck_truth_only on the
    truth only."""
    truth, target = (server.dsn(sslmode="disable") for server in servers)
    for dsn in (truth, target):
        execute(
            dsn,
            "drop table if exists recheck_t, recheck_truth_only",
            "create table recheck_t (id int primary key, v text)",
            "insert into recheck_t values (1, 'a'), (2, 'b'), (3, 'c')",
        )
    execute(target, "update recheck_t set v = 'X' where id = 2")
    execute(truth, "create table recheck_truth_only (n int)")
    yield truth, target
    for dsn in (truth, target):
        execute(dsn, "drop table if exists recheck_t, recheck_truth_only")


def write_bundle(directory: Path, statement: str, fingerprint: str, **fields: Any) -> str:
    """One bundle, written by a BundleWriter from an event as the comparator makes them."""
    event = make_event(
        fields.pop("kind", "result_mismatch"),
        now=1_700_000_000.0,
        session=1,
        statement=statement,
        fingerprint=fingerprint,
        truth={"label": "pg15", "rows": 1, "digest": "1", "tag": "SELECT 1"},
        target={"label": "pg18", "rows": 1, "digest": "2", "tag": "SELECT 1"},
        differences=[],
        **fields,
    )
    writer = BundleWriter(directory, call_in_reactor=lambda f, *a, **kw: f(*a, **kw))
    writer.emit(event)
    done = threading.Event()
    writer.close().addCallback(lambda _: done.set())
    assert done.wait(10)
    path = directory / f"{fingerprint}.json"
    assert path.exists()
    return str(path)


def recheck(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["recheck", *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_still_differs_then_now_equal(dsns, tmp_path) -> None:
    truth, target = dsns
    path = write_bundle(tmp_path, SELECT, "sel", parameters=["2"])
    code, out, err = recheck(path, "--truth", truth, "--target", target)
    assert code == 1, out + err
    assert f"{path}: still differs: 1 rows differ" in out
    assert 'pg15 ["2", "b"] | pg18 ["2", "X"]' in out  # the first differences, by label
    assert "value [v]" in out

    execute(target, "update recheck_t set v = 'b' where id = 2")
    code, out, err = recheck(path, "--truth", truth, "--target", target)
    assert code == 0, out + err
    assert f"{path}: now equal" in out
    assert "1 bundles: 0 still differ, 1 now equal, 0 could not run" in out


def test_writes_are_rolled_back(dsns, tmp_path) -> None:
    truth, target = dsns
    before = (rows(truth), rows(target))
    update = write_bundle(
        tmp_path,
        "update recheck_t set v = $2 where id = $1",
        "upd",
        kind="tag_mismatch",
        parameters=["1", "changed"],
    )
    insert = write_bundle(tmp_path, "insert into recheck_t values (9, 'new')", "ins")
    delete = write_bundle(tmp_path, "delete from recheck_t", "del")
    code, out, err = recheck(update, insert, delete, "--truth", truth, "--target", target)
    assert code == 0, out + err  # same tags on both
    assert out.count(": now equal") == 3
    assert (rows(truth), rows(target)) == before

    by_value = write_bundle(
        tmp_path, "update recheck_t set v = 'z' where v = $1", "tag", parameters=["b"]
    )
    code, out, err = recheck(by_value, "--truth", truth, "--target", target)
    assert code == 1, out + err
    assert "still differs: the command tags differ" in out
    assert "pg15: tag 'UPDATE 1'" in out and "pg18: tag 'UPDATE 0'" in out
    assert (rows(truth), rows(target)) == before


def test_error_on_one_side_only(dsns, tmp_path) -> None:
    truth, target = dsns
    path = write_bundle(
        tmp_path, "select count(*) from recheck_truth_only", "err", kind="error_divergence"
    )
    code, out, err = recheck(path, "--truth", truth, "--target", target)
    assert code == 1, out + err
    assert "still differs: only pg18 failed: 42P01" in out
    assert "pg18: error 42P01: relation" in out

    code, out, _ = recheck(path, "--truth", truth, "--target", target, "--json")
    [result] = json.loads(out)
    assert result["status"] == "still_differs"
    assert result["target"]["sqlstate"] == "42P01"
    assert result["truth"]["sqlstate"] is None
    assert result["truth"]["rows"] == 1
    assert result["digest_algorithm"] == "blake2b64-rowsum-v1"


def test_json_output_and_portable_digests(dsns, tmp_path) -> None:
    truth, target = dsns
    path = write_bundle(tmp_path, SELECT, "sel", parameters=["2"])
    code, out, _ = recheck(path, "--truth", truth, "--target", target, "--json")
    assert code == 1
    [result] = json.loads(out)
    assert result["bundle"] == path
    assert result["parameters"] == ["2"]
    assert result["differing_rows"] == 1
    assert result["differences"][0]["truth"] == ["2", "b"]
    assert result["differences"][0]["target"] == ["2", "X"]
    assert result["differences"][0]["columns"] == ["v"]
    assert result["truth"]["digest"] != result["target"]["digest"]
    execute(target, "update recheck_t set v = 'b' where id = 2")
    [again] = json.loads(recheck(path, "--truth", truth, "--target", target, "--json")[1])
    assert again["status"] == "now_equal"
    assert again["truth"]["digest"] == again["target"]["digest"] == result["truth"]["digest"]


def test_settings_types_and_binary_parameters(dsns) -> None:
    truth, target = dsns
    bundle = load_bundle_of(
        statement="select current_setting('TimeZone'),"
        " to_char(timestamptz '2024-01-01 00:00+00', 'HH24'), $1::text",
        parameters=["x"],
        settings={"TimeZone": "Asia/Tokyo", "DateStyle": "ISO, DMY", "server_version": "1"},
    )
    outcome = recheck_bundle(bundle, truth, target)
    assert outcome.status == NOW_EQUAL, outcome.reason
    assert outcome.truth is not None and outcome.truth.columns is not None
    assert outcome.truth.rows == [
        b"\x00\x03\x00\x00\x00\x0aAsia/Tokyo\x00\x00\x00\x0209\x00\x00\x00\x01x"
    ]
    assert [c.name for c in outcome.truth.columns] == ["current_setting", "to_char", "text"]
    assert isinstance(outcome.truth.columns[0], Column)

    binary = load_bundle_of(
        statement=SELECT, parameters=["\\x00000002"], parameter_types=[23], parameter_formats=[1]
    )
    outcome = recheck_bundle(binary, truth, target)
    assert outcome.status == "still_differs", outcome.reason
    assert outcome.differences[0]["target"] == ("2", "X")


def load_bundle_of(**fields: Any) -> dict[str, Any]:
    from twinkly.report.bundles import make_bundle

    event = {"kind": "result_mismatch", "fingerprint": "x", "truth": {"label": "pg15"},
             "target": {"label": "pg18"}, **fields}  # fmt: skip
    return json.loads(json.dumps(make_bundle(event)))


def test_what_is_not_run(dsns, tmp_path) -> None:
    truth, target = dsns
    refused = {
        "commit": "transaction control",
        "select 1; select 2": "2 statements",
        "copy recheck_t to stdout": "COPY",
    }
    for sql, reason in refused.items():
        outcome = recheck_bundle(load_bundle_of(statement=sql), truth, target)
        assert (outcome.status, reason in (outcome.reason or "")) == (COULD_NOT_RUN, True)
    redacted = load_bundle_of(statement=SELECT, redacted=True)
    assert recheck_bundle(redacted, truth, target).status == COULD_NOT_RUN
    no_parameters = recheck_bundle(load_bundle_of(statement=SELECT), truth, target)
    assert no_parameters.status == COULD_NOT_RUN
    assert "parameters" in (no_parameters.reason or ""), no_parameters.truth
    bad_setting = load_bundle_of(statement="select 1", settings={"no_such_setting": "1"})
    assert "cannot set no_such_setting" in (recheck_bundle(bad_setting, truth, target).reason or "")
    slow = recheck_bundle(
        load_bundle_of(statement="select pg_sleep(5)"), truth, target, timeout=0.2
    )
    assert (slow.status, slow.reason) == (
        COULD_NOT_RUN,
        "canceled on pg15 (statement timeout 0.2 s)",
    )
    path = write_bundle(tmp_path, "commit", "commit")
    code, out, _ = recheck(path, "--truth", truth, "--target", target)
    assert code == 1
    assert "could not run: transaction control" in out


def test_usage_errors(dsns, tmp_path) -> None:
    truth, target = dsns
    path = write_bundle(tmp_path, SELECT, "sel", parameters=["2"])
    code, out, err = recheck(str(tmp_path / "missing.json"), "--truth", truth, "--target", target)
    assert (code, out) == (2, "")
    assert "no such file" in err
    (tmp_path / "other.json").write_text('{"kind": "result_mismatch"}')
    code, _, err = recheck(str(tmp_path / "other.json"), "--truth", truth, "--target", target)
    assert code == 2 and "not a Twinkly repro bundle" in err
    code, _, err = recheck(path, "--truth", "not a dsn", "--target", target)
    assert code == 2 and "--truth" in err
    code, _, err = recheck(path, "--truth", truth, "--target", "host=127.0.0.1 port=1")
    assert code == 2 and "cannot connect to --target" in err
    assert recheck(path, "--truth", truth)[0] == 2  # argparse: --target is required

"""Backends reached on their Unix sockets (``host`` is the socket directory, as in
libpq): logins, answers, comparison and cancels all go over the socket."""

from __future__ import annotations

import ast
import re

import psycopg
import pytest
from proxyproc import assert_cancels_a_sleep

pytestmark = pytest.mark.backends


def test_both_backends_on_their_unix_sockets(start_proxy) -> None:
    proxy = start_proxy("unix", unix_sockets=True)
    assert f'host = "{proxy.truth.socket_dir}"' in proxy.config_path.read_text()
    application = "twinkly-e2e-unix"
    with psycopg.connect(proxy.dsn(application_name=application), autocommit=True) as conn:
        # A Unix-socket session has no client address on the server.
        assert conn.execute("select inet_client_addr()").fetchone() == (None,)
        assert conn.execute("select sum(g) from generate_series(1, 100) g").fetchone() == (5050,)
        conn.execute("create temp table unix_t (x int)")
        assert conn.execute("insert into unix_t values (1), (2)").rowcount == 2
        # The target's session came over its socket too.
        with psycopg.connect(proxy.target_dsn, autocommit=True) as target:
            rows = target.execute(
                "select client_addr from pg_stat_activity where application_name = %s",
                (application,),
            ).fetchall()
        assert rows == [(None,)]
        # A cancel reaches both backends over their sockets.
        assert_cancels_a_sleep(conn, conn.cancel)
        assert conn.execute("select 'still usable'").fetchone() == ("still usable",)
    # Every statement was compared, and none differed (the totals logged at shutdown).
    proxy.stop()
    found = re.search(r"comparison totals: (\{.*?\})", proxy.log_text())
    assert found is not None, proxy.log_text()[-2000:]
    totals = ast.literal_eval(found[1])
    assert totals["matched"] >= 6, totals
    assert totals["mismatched"] == totals["one_sided_error"] == 0, totals

"""Soak test (not in CI): mixed pgbench and driver load through Twinkly, a fault every
minute, then the proxy's RSS and fds, backend connections left and events lost.

    scripts/soak.sh [--duration 30m] [--fault-every 60s]

Runs on a sandbox of its own (ports from TWINKLY_PG15_PORT / TWINKLY_PG18_PORT, moved
to free ones if taken), so its faults (a target stopped with -m immediate, backends
terminated) touch nobody else's servers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tests" / "e2e", REPO / "tests" / "faults"):
    sys.path.insert(0, str(path))

import psycopg  # noqa: E402
from faultkit import (  # noqa: E402
    FAULT_PROXY_CONFIG,
    client_backends,
    fds,
    kill_mid_stream,
    rss_mb,
    start_server,
    stop_server,
    wait_no_backends,
)
from pgwire import free_port  # noqa: E402
from proxyproc import start_proxy_process  # noqa: E402

from devtools.sandbox import Sandbox  # noqa: E402
from twinkly.config.hocon import parse_seconds  # noqa: E402


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Load:
    """pgbench (restarted every segment: it gives up on a lost connection) and driver
    threads doing simple and extended statements and transactions, reconnecting."""

    def __init__(self, proxy, pgbench: Path, stop: threading.Event) -> None:
        self.proxy, self.pgbench, self.stop = proxy, pgbench, stop
        self.statements = 0
        self.errors = 0
        self.pgbench_runs = 0
        self.pgbench_tx = 0
        self.threads = [threading.Thread(target=self._driver, args=(n,)) for n in range(4)]
        self.threads.append(threading.Thread(target=self._bench))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def _driver(self, n: int) -> None:
        rng = random.Random(n)
        while not self.stop.is_set():
            try:
                with psycopg.connect(
                    self.proxy.dsn(application_name=f"soak-driver-{n}"), autocommit=True
                ) as conn:
                    for _ in range(rng.randint(20, 200)):
                        if self.stop.is_set():
                            break
                        self._one(conn, rng)
                        self.statements += 1
            except psycopg.Error:
                self.errors += 1
                time.sleep(0.2)

    def _one(self, conn, rng: random.Random) -> None:
        choice = rng.random()
        if choice < 0.4:
            conn.execute(
                "select abalance from pgbench_accounts where aid = %s", (rng.randint(1, 100000),)
            ).fetchall()
        elif choice < 0.6:
            with psycopg.ClientCursor(conn) as cur:  # the simple query protocol
                cur.execute("select count(*), sum(bid) from pgbench_branches").fetchall()
        elif choice < 0.8:
            with conn.transaction():
                aid = rng.randint(1, 100000)
                conn.execute(
                    "update pgbench_accounts set abalance = abalance + 1 where aid = %s", (aid,)
                )
                conn.execute(
                    "select abalance from pgbench_accounts where aid = %s", (aid,)
                ).fetchall()
        else:
            conn.execute("select g, md5(g::text) from generate_series(1, 2000) g").fetchall()

    def _bench(self) -> None:
        while not self.stop.is_set():
            cmd = [
                str(self.pgbench),
                "-n",
                "-c",
                "3",
                "-T",
                "20",
                "-M",
                random.choice(["simple", "extended", "prepared"]),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.proxy.port),
                "-U",
                "twinkly",
                "app",
            ]
            env = {"PGPASSWORD": "twinkly-pw", "PATH": "/usr/bin:/bin"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            self.pgbench_runs += 1
            for line in done.stdout.splitlines():
                if line.startswith("number of transactions actually processed"):
                    self.pgbench_tx += int(line.split(":")[1].split("/")[0])


def fault_terminate(servers, side: int) -> str:
    server = servers[side]
    with psycopg.connect(
        server.dsn(sslmode="disable", application_name="faults-check"), autocommit=True
    ) as conn:
        rows = conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where backend_type = 'client backend' and application_name like 'soak-driver-%'"
            " and pid <> pg_backend_pid()"
        ).fetchall()
    return f"terminated {len(rows)} driver backends on {server.label}"


def fault_target_restart(servers, _: int) -> str:
    stop_server(servers[1], "immediate")
    time.sleep(8)
    start_server(servers[1])
    return f"stopped {servers[1].label} -m immediate for 8 s, restarted"


def fault_client_killed(proxy) -> str:
    kill_mid_stream(proxy.port, "soak-victim")
    return "killed a client mid-stream of a 3M-row SELECT"


def fault_half_open(proxy) -> str:
    socks = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(100)]
    time.sleep(3)  # past client-login-timeout (2 s)
    for sock in socks:
        sock.close()
    return "100 half-open connections"


def fault_garbage(proxy) -> str:
    rng = random.Random()
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))))
    return "200 connections of random bytes"


def metric_total(http: str, name: str) -> float:
    text = urllib.request.urlopen(http + "/metrics", timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", default="30m")
    parser.add_argument("--fault-every", default="60s")
    args = parser.parse_args()
    duration, every = parse_seconds(args.duration), parse_seconds(args.fault_every)
    with Sandbox() as box:
        servers = box.servers
        assert servers is not None
        pgbench = servers[0].binary("pgbench")
        for server in servers:
            env = {"PGPASSWORD": "twinkly-pw", "PATH": "/usr/bin:/bin"}
            subprocess.run(
                [
                    str(pgbench),
                    "-i",
                    "-q",
                    "-s",
                    "1",
                    "-h",
                    server.host,
                    "-p",
                    str(server.port),
                    "-U",
                    "twinkly",
                    "app",
                ],
                check=True,
                capture_output=True,
                env=env,
            )
        http_port = free_port()
        workdir = Path(box.root) / "soak-proxy"  # type: ignore[arg-type]
        extra = FAULT_PROXY_CONFIG + f"monitoring.http {{ enabled = true, port = {http_port} }}\n"
        extra += "comparison.report-slow-queries = false\n"
        proxy = start_proxy_process(*servers, workdir, extra=extra)
        http = f"http://127.0.0.1:{http_port}"
        time.sleep(1)
        start_rss, start_fds = rss_mb(proxy.pid), fds(proxy.pid)
        log(
            f"proxy pid {proxy.pid}: RSS {start_rss:.1f} MB, {start_fds} fds;"
            f" running {duration:.0f}s"
        )
        stop = threading.Event()
        load = Load(proxy, pgbench, stop)
        load.start()
        faults = itertools.cycle(
            [
                lambda: fault_terminate(servers, 0),
                lambda: fault_terminate(servers, 1),
                lambda: fault_target_restart(servers, 1),
                lambda: fault_client_killed(proxy),
                lambda: fault_half_open(proxy),
                lambda: fault_garbage(proxy),
            ]
        )
        started = time.monotonic()
        peak_rss = start_rss
        next_fault = started + every
        while time.monotonic() - started < duration:
            time.sleep(1)
            peak_rss = max(peak_rss, rss_mb(proxy.pid))
            if time.monotonic() >= next_fault:
                log(next(faults)())
                next_fault += every
                log(
                    f"  RSS {rss_mb(proxy.pid):.1f} MB, {fds(proxy.pid)} fds,"
                    f" {load.statements} driver statements, {load.pgbench_tx} pgbench tx"
                )
        stop.set()
        load.join()
        wait_no_backends(servers, timeout=30)
        time.sleep(2)
        end_rss, end_fds = rss_mb(proxy.pid), fds(proxy.pid)
        emitted = metric_total(http, "twinkly_events_total")
        code = proxy.stop()
        events_file = workdir / "reports" / "twinkly-events.jsonl"
        lines = (
            [json.loads(x) for x in events_file.read_text().splitlines() if x.strip()]
            if events_file.exists()
            else []
        )
        kinds: dict[str, int] = {}
        for event in lines:
            kinds[event["kind"]] = kinds.get(event["kind"], 0) + 1
        left = [client_backends(s) for s in servers]
        print(
            json.dumps(
                {
                    "duration_s": round(time.monotonic() - started),
                    "proxy_exit": code,
                    "rss_mb": {
                        "start": round(start_rss, 1),
                        "peak": round(peak_rss, 1),
                        "end": round(end_rss, 1),
                    },
                    "fds": {"start": start_fds, "end": end_fds},
                    "backend_connections_left": {
                        s.label: len(x) for s, x in zip(servers, left, strict=True)
                    },
                    "driver_statements": load.statements,
                    "driver_reconnects_after_error": load.errors,
                    "pgbench_runs": load.pgbench_runs,
                    "pgbench_transactions": load.pgbench_tx,
                    "events_counted_by_proxy": int(emitted),
                    "events_in_file": len(lines),
                    "events_lost": int(emitted) - len(lines),
                    "events_by_kind": kinds,
                    "bad_log_lines": proxy.bad_log_lines()[:5],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

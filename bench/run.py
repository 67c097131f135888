"""Twinkly benchmark: what does running every statement twice cost a client?

Compares, in one run, PostgreSQL 15 (the source of truth) reached directly, through pgbouncer
(the proxy a user would otherwise pick) and through Twinkly (which also runs every statement on
PostgreSQL 18). Measurements are interleaved round by round so that the machine's noise (other
jobs, CPU frequency, caches) is shared fairly instead of landing on whichever target ran last.

Usage, from the repository root: ``.venv/bin/python bench/run.py [--rounds 3] [--duration 10]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import psutil
from processes import (
    DBNAME,
    MB,
    PGBENCH,
    PSQL,
    USER,
    Relay,
    Twinkly,
    baseline_tree,
    client_env,
    free_port,
    log,
    remove_tree,
)  # fmt: skip

from devtools.pgbouncer import run_pgbouncer, stop_pgbouncer
from devtools.sandbox import HOST, PG15_BINDIR, Sandbox, Server

BIG_SELECT = "select g, repeat('x', 50) from generate_series(1, {rows}) g"
BIG_ROWS, FLAT_ROWS = 1_000_000, 5_000_000  # memory must not grow with the answer's size
# "both": two pgbench at once, one per server, direct: what running every statement on both
# servers costs this machine with a free proxy (the ceiling for Twinkly). "relay": bench/relay.c,
# a proxy that fans out and compares nothing (the floor of any fan-out proxy's own cost: its
# hops, its syscalls). "twinkly" runs the C accelerator, "pure" the same Twinkly with
# TWINKLY_PURE_PYTHON=1, "workers2" the C one with proxy.workers = 2; all compare, time and
# write events as configured by default.
TARGETS = ("direct", "both", "relay", "pgbouncer", "twinkly", "pure", "workers2")
MODES = {
    "simple": TARGETS,
    "prepared": TARGETS,
    "extended": ("direct", "both", "relay", "twinkly", "pure", "workers2"),
}
TWINKLIES = ("twinkly", "pure", "workers2")
GOALS = {
    "tps_ratio_min": {"simple": 0.30, "prepared": 0.25, "extended": 0.25},
    "select_1m_ratio_max": 1.3,
    "peak_rss_mb_max": 64.0,
    "cpu_us_per_txn_max": {"simple": 80.0, "extended": 100.0},
}


def peak_rss_during(pid: int, work: Callable[[], float]) -> tuple[float, float]:
    """work()'s result and pid's peak RSS in MB, sampled every 50 ms (a peak needs many looks)."""
    process, peak, done = psutil.Process(pid), [0.0], threading.Event()

    def sample() -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], process.memory_info().rss / MB)
            if done.wait(0.05):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        return work(), peak[0]
    finally:
        done.set()
        sampler.join()


def pgbench_init(port: int, scale: int) -> None:
    cmd = [PGBENCH, "-i", "-q", "-s", str(scale), "-h", HOST, "-p", str(port), "-U", USER, DBNAME]
    proc = subprocess.run(cmd, env=client_env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench -i on port {port} failed:\n{proc.stderr[-2000:]}")


def pgbench_run(port: int, mode: str, args: argparse.Namespace, duration: int) -> dict[str, Any]:
    """One select-only run; -n because VACUUM through Twinkly would hit both backends."""
    cmd = [PGBENCH, "-n", "-S", "-M", mode, "-c", str(args.clients), "-j", str(args.threads)]
    cmd += ["-T", str(duration), "-h", HOST, "-p", str(port), "-U", USER, DBNAME]
    proc = subprocess.run(
        cmd, env=client_env(), capture_output=True, text=True, timeout=duration + 120
    )
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
    txns = re.search(r"number of transactions actually processed: (\d+)", proc.stdout)
    errors = [line for line in proc.stderr.splitlines() if "error" in line or "abort" in line]
    if proc.returncode != 0 or match is None or errors:
        first = errors[0] if errors else (proc.stderr.strip() or f"exit {proc.returncode}")
        return {"tps": None, "error": first[:300]}
    return {"tps": float(match.group(1)), "txns": int(txns.group(1)) if txns else 0, "error": None}


def pgbench_both(ports: tuple[int, int], mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One pgbench per server at the same time, direct: the lower TPS of the two (a proxy
    that runs every statement on both goes at the pace of the slower one)."""
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(pgbench_run, port, mode, args, args.duration) for port in ports]
        results = [f.result() for f in futures]
    failed = [r for r in results if r["error"]]
    if failed:
        return {"tps": None, "error": failed[0]["error"]}
    return {"tps": min(r["tps"] for r in results), "error": None}


def timed_select(port: int, rows: int = BIG_ROWS) -> float:
    """Wall time of psql fetching all rows, output thrown away (psql's own cost is on both)."""
    cmd = [PSQL, "-X", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", str(port), "-U", USER]
    cmd += ["-d", DBNAME, "-Atc", BIG_SELECT.format(rows=rows)]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, env=client_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"psql on port {port} failed: {proc.stderr.decode(errors='replace')}")
    return elapsed


def rotated(items: tuple[str, ...], shift: int) -> list[str]:
    """Each round starts with a different target, so no target always runs first (or last)."""
    shift %= len(items)
    return list(items[shift:] + items[:shift])


def measure(
    args: argparse.Namespace, ports: dict[str, Any], twinklies: dict[str, Twinkly], relay: Relay
) -> dict[str, Any]:
    """All measurements; returns the JSON-able results."""
    log("warm-up: a short simple run on every target (also checks that each one works)")
    for target, port in ports.items():
        if target == "both":
            continue
        warm = pgbench_run(port, "simple", args, min(2, args.duration))
        if warm["error"]:
            raise RuntimeError(f"warm-up on {target} failed: {warm['error']}")

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        mode: {t: [] for t in targets if t in ports} for mode, targets in MODES.items()
    }
    for rnd in range(args.rounds):
        for mode, per_target in runs.items():
            for target in rotated(tuple(per_target), rnd):
                log(f"round {rnd + 1}/{args.rounds}: -M {mode} on {target}")
                proxy = relay if target == "relay" else twinklies.get(target)
                result = one_run(args, ports, proxy, target, mode)
                per_target[target].append(result)
    pgbench = summarise(runs)
    # The 1M-row SELECT and its RSS are one process's: the single-worker Twinklies.
    single = {name: t for name, t in twinklies.items() if name != "workers2"}
    big, rss = big_select(args, ports, single)
    accelerators = {name: t.accelerator() for name, t in twinklies.items()}
    main = twinklies["twinkly"]
    profile = run_profile(args, main.port, main) if args.profile else None
    return {
        "pgbench": pgbench,
        "big_select": big,
        "twinkly_rss": rss,
        "accelerators": accelerators,
        "profile": profile,
    }


def one_run(
    args: argparse.Namespace,
    ports: dict[str, Any],
    proxy: Twinkly | Relay | None,
    target: str,
    mode: str,
) -> dict[str, Any]:
    """One pgbench run on one target; for a proxy of ours, also its CPU per transaction."""
    cpu_before = proxy.cpu_seconds() if proxy else 0.0
    if target == "both":
        result = pgbench_both(ports["both"], mode, args)
    else:
        result = pgbench_run(ports[target], mode, args, args.duration)
    if proxy is not None and result.get("txns"):
        result["cpu_us_per_txn"] = (proxy.cpu_seconds() - cpu_before) * 1e6 / result["txns"]
    if result["error"]:
        log(f"  failed: {result['error']}")
    else:
        cpu = result.get("cpu_us_per_txn")
        log(f"  {result['tps']:.1f} tps" + (f", {cpu:.1f} us CPU/txn" if cpu else ""))
    return result


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Median TPS, ratio to direct and median CPU per transaction, per mode and target."""
    pgbench: dict[str, dict[str, Any]] = {mode: {} for mode in runs}
    for mode, per_target in runs.items():
        for target, results in per_target.items():
            tps = [r["tps"] for r in results if r["tps"] is not None]
            cpu = [r["cpu_us_per_txn"] for r in results if "cpu_us_per_txn" in r]
            pgbench[mode][target] = {
                "runs_tps": [r["tps"] for r in results],  # None: the run failed
                "median_tps": statistics.median(tps) if tps else None,
                "cpu_us_per_txn": statistics.median(cpu) if cpu else None,
                "errors": sorted({r["error"] for r in results if r["error"]}),
            }
        direct = pgbench[mode]["direct"]["median_tps"]
        for entry in pgbench[mode].values():
            median = entry["median_tps"]
            entry["ratio"] = median / direct if median is not None and direct else None
    return pgbench


def big_select(
    args: argparse.Namespace, ports: dict[str, Any], twinklies: dict[str, Twinkly]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The 1M-row SELECT's wall times (direct, each Twinkly) and each Twinkly's RSS."""
    log("1M-row SELECT: direct and through each Twinkly, alternating")
    big_targets = ("direct", *twinklies)
    times: dict[str, list[float]] = {t: [] for t in big_targets}
    rss: dict[str, dict[str, Any]] = {
        name: {"at_start_mb": t.rss_at_start, "baseline_mb": None, "peak_mb": 0.0}
        for name, t in twinklies.items()
    }
    for rnd in range(args.rounds):
        for target in rotated(big_targets, rnd):
            if target == "direct":
                times["direct"].append(timed_select(ports["direct"]))
                continue
            twinkly = twinklies[target]
            if rss[target]["baseline_mb"] is None:
                rss[target]["baseline_mb"] = twinkly.rss()
            assert twinkly.proc is not None
            elapsed, run_peak = peak_rss_during(
                twinkly.proc.pid, lambda t=twinkly: timed_select(t.port)
            )
            times[target].append(elapsed)
            rss[target]["peak_mb"] = max(rss[target]["peak_mb"], run_peak)
            log(f"  {target}: {elapsed:.2f}s, peak RSS {run_peak:.1f} MB")
    big: dict[str, Any] = {
        t: {"runs_s": v, "median_s": statistics.median(v)} for t, v in times.items()
    }
    for target in twinklies:
        big[target]["ratio"] = big[target]["median_s"] / big["direct"]["median_s"]
        twinkly = twinklies[target]
        assert twinkly.proc is not None
        _, rss[target]["peak_5m_mb"] = peak_rss_during(
            twinkly.proc.pid, lambda t=twinkly: timed_select(t.port, FLAT_ROWS)
        )
        log(f"  {target}: {FLAT_ROWS:,} rows, peak RSS {rss[target]['peak_5m_mb']:.1f} MB")
    return big, rss


def run_profile(args: argparse.Namespace, port: int, twinkly: Twinkly) -> str | None:
    """An extra, uncounted simple run under py-spy: sampling slows Twinkly, so its TPS is moot."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        log("--profile: py-spy not installed (pip install py-spy); skipping the flamegraph")
        return None
    assert twinkly.proc is not None
    svg = Path(args.profile).resolve()
    cmd = [py_spy, "record", "--pid", str(twinkly.proc.pid), "--duration", str(args.duration)]
    cmd += ["--rate", "200", "--format", "flamegraph", "--output", str(svg)]
    log(f"profiling Twinkly during a {args.duration}s simple run -> {svg}")
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as spy:
        time.sleep(0.5)  # let py-spy attach before the load starts
        pgbench_run(port, "simple", args, args.duration)
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
    if spy.returncode != 0 or not svg.exists():
        log(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}")
        return None
    return str(svg)


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    head = f"pgbench -S, {args.clients} clients, -j {args.threads}, scale {args.scale},"
    accelerators = results.get("accelerators", {})
    lines = [
        f"Twinkly benchmark ({head} {args.rounds} rounds x {args.duration}s, median TPS)",
        "targets: both = pgbench on PG 15 and PG 18 at once, direct (the lower TPS);"
        " relay = fan-out to both, nothing compared (bench/relay.c);"
        + "".join(
            f" {name} = Twinkly at {args.baseline};"
            if name == "baseline"
            else f" {name} = Twinkly, {impl} hot path;"
            for name, impl in accelerators.items()
        ),
        f"{'mode':<9} {'target':<10} {'median TPS':>11} {'vs direct':>10} {'CPU us/txn':>11}"
        f"  {'runs':<28} goal",
    ]
    cpu_goals, tps_goals = GOALS["cpu_us_per_txn_max"], GOALS["tps_ratio_min"]
    for mode, per_target in results["pgbench"].items():
        for target, e in per_target.items():
            goals = []
            if mode in tps_goals and target in TWINKLIES:
                ok = None if e["ratio"] is None else e["ratio"] >= tps_goals[mode]
                goals.append(f"TPS >= {tps_goals[mode]:.2f}x {verdict(ok)}")
            if mode in cpu_goals and target in TWINKLIES:
                cpu = e["cpu_us_per_txn"]
                ok = None if cpu is None else cpu <= cpu_goals[mode]
                goals.append(f"CPU <= {cpu_goals[mode]:.0f} {verdict(ok)}")
            runs = ", ".join(fmt(t, ".0f").replace("n/a", "failed") for t in e["runs_tps"])
            ratio = fmt(e["ratio"], ".3f")
            cpu = fmt(e.get("cpu_us_per_txn"), ".1f").replace("n/a", "")
            lines.append(
                f"{mode:<9} {target:<10} {fmt(e['median_tps'], '.1f'):>11} {ratio:>10} {cpu:>11}"
                f"  {runs:<28} {', '.join(goals)}".rstrip()
            )
            lines += [f"{'':<22}error: {err}" for err in e["errors"]]
    lines += cpu_against_baseline(results["pgbench"], args)
    big, rss = results["big_select"], results["twinkly_rss"]
    lines += [
        "",
        f"1M-row SELECT (psql -Atc > /dev/null), median of {args.rounds}:",
        f"  direct   {big['direct']['median_s']:8.2f} s",
    ]
    max_ratio, max_peak = GOALS["select_1m_ratio_max"], GOALS["peak_rss_mb_max"]
    for name in rss:
        ratio = big[name]["ratio"]
        peak = rss[name]["peak_mb"]
        lines += [
            f"  {name:<8} {big[name]['median_s']:8.2f} s   {ratio:.2f}x direct"
            f"   goal <= {max_ratio:.1f}x  {verdict(ratio <= max_ratio)}"
            f";  RSS baseline {fmt(rss[name]['baseline_mb'], '.1f')} MB, peak {peak:.1f} MB"
            f"   goal <= {max_peak:.0f} MB  {verdict(peak <= max_peak)}"
            f";  {FLAT_ROWS // 1_000_000}M rows: peak {rss[name]['peak_5m_mb']:.1f} MB",
        ]
    if results.get("profile"):
        lines.append(f"flamegraph: {results['profile']}")
    return "\n".join(lines)


def cpu_against_baseline(pgbench: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """Each Twinkly's CPU per transaction over the baseline's, in this run: on a machine
    whose speed changes by hours, the figure that compares with one measured another day."""
    lines = []
    for mode, per_target in pgbench.items():
        base = per_target.get("baseline", {}).get("cpu_us_per_txn")
        if not base:
            continue
        ratios = [
            f"{name} {e['cpu_us_per_txn'] / base:.2f}x"
            for name, e in per_target.items()
            if name not in ("baseline", "relay") and e.get("cpu_us_per_txn")
        ]
        lines.append(f"  {mode:<9} {', '.join(ratios)}")
    if lines:
        lines.insert(0, f"CPU per transaction against the Twinkly at {args.baseline}, same run:")
    return lines


def optional_twinklies(
    args: argparse.Namespace,
    workdir: Path,
    pg15: Server,
    pg18: Server,
    cleanups: list[tuple[str, Callable[[], None]]],
) -> dict[str, Twinkly]:
    """--untimed: the same Twinkly comparing but not timing (what timing costs);
    --baseline REV: the Twinkly of an earlier revision, measured in the same run."""
    started: dict[str, Twinkly] = {}
    if args.untimed:
        config = "comparison.report-slow-queries = false\n"
        started["untimed"] = Twinkly(workdir / "untimed", pg15, pg18, config)
    if args.baseline:
        tree = baseline_tree(args.baseline, workdir / "baseline-src")
        cleanups.append(("baseline checkout", lambda: remove_tree(tree)))
        env = {"PYTHONPATH": str(tree)}
        started["baseline"] = Twinkly(workdir / "baseline", pg15, pg18, env=env)
    for name, twinkly in started.items():
        cleanups.append((name, twinkly.stop))
        twinkly.start()
        for mode in MODES:
            MODES[mode] = (*MODES[mode], name)
        log(f"Twinkly {name} on port {twinkly.port}")
    return started


def kill_pidfile(pidfile: Path) -> None:
    """pgbouncer started but run_pgbouncer never returned its Popen: stop it by its own PID."""
    with contextlib.suppress(ValueError, OSError):
        os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt  # SIGTERM gets the same cleanup as Ctrl-C


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    p.add_argument("--clients", type=int, default=4, help="pgbench -c (default 4)")
    p.add_argument("--threads", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    p.add_argument("--pg15-port", type=int, help="use this running truth server (no sandbox)")
    p.add_argument("--pg18-port", type=int, help="use this running target server (no sandbox)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument(
        "--untimed",
        action="store_true",
        help="also run a Twinkly with comparison.report-slow-queries = false (what timing costs)",
    )
    p.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the Twinkly of this git revision (checked out and built beside this one)",
    )
    p.add_argument(
        "--profile", nargs="?", const="twinkly-flamegraph.svg", metavar="SVG",
        help="extra simple run under py-spy, flamegraph to SVG (default twinkly-flamegraph.svg)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if (args.pg15_port is None) != (args.pg18_port is None):
        p.error("--pg15-port and --pg18-port go together (their pgbench tables are recreated)")
    if args.rounds < 1 or args.duration < 1:
        p.error("--rounds and --duration must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="twinkly-bench-"))
    workdir.chmod(0o755)  # pgbouncer runs as postgres when we are root
    cleanups: list[tuple[str, Callable[[], None]]] = []  # undone in reverse order
    twinkly: Twinkly | None = None
    try:
        if args.pg15_port is None:
            log("starting the sandbox (PostgreSQL 15 and 18)")
            sandbox = Sandbox()
            cleanups.append(("sandbox", sandbox.stop))
            pg15, pg18 = sandbox.start()
        else:  # only host and port are used from here on
            nowhere = Path("/nonexistent")
            pg15, pg18 = (
                Server(f"pg{v}", v, HOST, port, PG15_BINDIR, nowhere, nowhere, nowhere)
                for v, port in ((15, args.pg15_port), (18, args.pg18_port))
            )
        log(f"pgbench -i -s {args.scale} on {pg15.label}:{pg15.port} and {pg18.label}:{pg18.port}")
        with ThreadPoolExecutor(2) as pool:
            for fut in [pool.submit(pgbench_init, s.port, args.scale) for s in (pg15, pg18)]:
                fut.result()
        twinkly = Twinkly(workdir, pg15, pg18)
        cleanups.append(("twinkly", twinkly.stop))
        twinkly.start()
        log(f"Twinkly (pid {twinkly.proc.pid if twinkly.proc else '?'}) on port {twinkly.port}")
        # The same Twinkly forced to its pure-Python hot path: what the C accelerator buys.
        pure = Twinkly(workdir / "pure", pg15, pg18, env={"TWINKLY_PURE_PYTHON": "1"})
        cleanups.append(("pure", pure.stop))
        pure.start()
        log(f"Twinkly, pure Python (pid {pure.proc.pid if pure.proc else '?'}) on port {pure.port}")
        # Two worker processes behind the same address (proxy.workers = 2).
        workers2 = Twinkly(workdir / "workers2", pg15, pg18, "proxy.workers = 2\n")
        cleanups.append(("workers2", workers2.stop))
        workers2.start()
        time.sleep(2.0)  # the second worker may still be starting when the first listens
        log(f"Twinkly with 2 workers on port {workers2.port}")
        relay = Relay(workdir / "relay", pg15, pg18)
        cleanups.append(("relay", relay.stop))
        relay.start()
        log(f"fan-out relay (pid {relay.proc.pid if relay.proc else '?'}) on port {relay.port}")
        twinklies = {"twinkly": twinkly, "pure": pure, "workers2": workers2}
        twinklies.update(optional_twinklies(args, workdir, pg15, pg18, cleanups))
        bouncer_port, pidfile = free_port(), workdir / "pgbouncer" / "pgbouncer.pid"
        cleanups.append(("pgbouncer", lambda: kill_pidfile(pidfile)))  # if interrupted early
        bouncer = run_pgbouncer(pg15, bouncer_port, pidfile.parent)
        cleanups[-1] = ("pgbouncer", lambda: stop_pgbouncer(bouncer))
        log(f"pgbouncer (pid {bouncer.pid}) on port {bouncer_port}")
        ports: dict[str, Any] = {
            "direct": pg15.port,
            "both": (pg15.port, pg18.port),
            "relay": relay.port,
            "pgbouncer": bouncer_port,
            "twinkly": twinkly.port,
            "pure": pure.port,
            "workers2": workers2.port,
        }
        ports.update((name, t.port) for name, t in twinklies.items() if name not in ports)
        results = measure(args, ports, twinklies, relay)
        elapsed = time.monotonic() - started
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        results.update(settings=settings, goals=GOALS, elapsed_s=elapsed)
        print(report(results, args))
        print(f"total run time: {elapsed:.0f} s")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except Exception:
        if twinkly is not None and twinkly.proc is not None:
            log(f"Twinkly log tail:\n{twinkly.log_tail()}")
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not skip cleanup
            signal.signal(sig, signal.SIG_IGN)
        for name, stop in reversed(cleanups):
            try:
                stop()
            except Exception as exc:
                log(f"stopping {name} failed: {exc}")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

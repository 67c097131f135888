"""Instructions per transaction: Twinkly's own work, counted instead of timed.

On a shared machine, CPU time per transaction moves by 10 % from one run to the next. The
number of instructions the proxy executes does not: valgrind's callgrind counts them
whatever else the machine does. This runs a Twinkly under callgrind twice per mode, for
``--short`` and ``--long`` pgbench select-only transactions on one client, and reports
(long - short) / (long - short transactions): start-up, connection and shutdown cancel
out, leaving the user-space instructions of one transaction (the kernel's part, system
time, is not counted). With ``--baseline REV`` the same is done for that revision's
Twinkly, and the ratio is printed.

Slow-query reporting stays on, with its threshold out of reach: under valgrind the target
may look slow, and an EXPLAIN on a side connection would be counted as the statement's.

Usage, from the repository root (needs valgrind: ``apt-get install valgrind``)::

    .venv/bin/python bench/instructions.py --pg15-port 54315 --pg18-port 54318 --baseline REV
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for devtools

from processes import (
    HOST,
    PGBENCH,
    REPO,
    USER,
    Twinkly,
    baseline_tree,
    client_env,
    log,
    remove_tree,
)
from run import pgbench_init

from devtools.sandbox import PG15_BINDIR, Sandbox, Server

CONFIG = "comparison.slow-query-min-ms = 100000000\n"


def callgrind_total(out_dir: Path) -> int:
    """The Ir total of the one profile callgrind wrote into ``out_dir``."""
    (profile,) = out_dir.glob("callgrind.out.*")
    for line in profile.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {profile}")


def count(tree: Path, workdir: Path, pg15: Server, pg18: Server, mode: str, txns: int) -> int:
    """Instructions of one Twinkly process over ``txns`` transactions (and its life)."""
    workdir.mkdir(parents=True, exist_ok=True)
    twinkly = Twinkly(workdir, pg15, pg18, CONFIG, env={"PYTHONPATH": str(tree)})
    out = workdir / "callgrind"
    out.mkdir(exist_ok=True)
    twinkly.cmd = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.out.%p",
        sys.executable, *twinkly.cmd,
    ]  # fmt: skip
    twinkly.start(timeout=180)
    try:
        cmd = [PGBENCH, "-n", "-S", "-M", mode, "-c", "1", "-j", "1", "-t", str(txns)]
        cmd += ["-h", HOST, "-p", str(twinkly.port), "-U", USER, "app"]
        proc = subprocess.run(cmd, env=client_env(), capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench failed: {proc.stderr[-500:]}")
    finally:
        assert twinkly.proc is not None
        twinkly.proc.terminate()  # callgrind writes its profile as the process exits
        twinkly.proc.wait(300)
    return callgrind_total(out)


def per_transaction(tree: Path, workdir: Path, pg15: Server, pg18: Server, mode: str,
                    args: argparse.Namespace) -> float:  # fmt: skip
    short = count(tree, workdir / f"{mode}-short", pg15, pg18, mode, args.short)
    long = count(tree, workdir / f"{mode}-long", pg15, pg18, mode, args.long)
    return (long - short) / (args.long - args.short)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default="simple,extended,prepared")
    p.add_argument("--short", type=int, default=200, help="transactions of the short run")
    p.add_argument("--long", type=int, default=1200, help="transactions of the long run")
    p.add_argument("--baseline", metavar="REV", help="also count this revision's Twinkly")
    p.add_argument("--pg15-port", type=int)
    p.add_argument("--pg18-port", type=int)
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        p.error("valgrind is not installed (apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="twinkly-instructions-"))
    sandbox = None
    trees = {"twinkly": REPO}
    try:
        if args.pg15_port is None:
            sandbox = Sandbox()
            pg15, pg18 = sandbox.start()
        else:
            nowhere = Path("/nonexistent")
            pg15, pg18 = (
                Server(f"pg{v}", v, HOST, port, PG15_BINDIR, nowhere, nowhere, nowhere)
                for v, port in ((15, args.pg15_port), (18, args.pg18_port))
            )
        for server in (pg15, pg18):
            pgbench_init(server.port, 10)
        if args.baseline:
            trees["baseline"] = baseline_tree(args.baseline, workdir / "baseline-src")
        print(f"instructions per select-only transaction (callgrind, 1 client,"
              f" {args.long} - {args.short} transactions)")  # fmt: skip
        for mode in args.modes.split(","):
            counted = {}
            for name, tree in trees.items():
                log(f"{mode}: counting {name}")
                counted[name] = per_transaction(tree, workdir / name, pg15, pg18, mode, args)
            line = f"{mode:9} " + "  ".join(f"{n} {v:,.0f}" for n, v in counted.items())
            if "baseline" in counted:
                line += f"  ratio {counted['twinkly'] / counted['baseline']:.2f}"
            print(line, flush=True)
        return 0
    finally:
        if "baseline" in trees:
            remove_tree(trees["baseline"])
        if sandbox is not None:
            sandbox.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

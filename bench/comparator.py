"""What judging one statement costs the proxy, with and without timing it.

Feeds the comparator pairs of equal results the way a pgbench run would (simple
protocol: a new SQL text each time; extended: the same text with a Bind), in one
process, and prints microseconds per statement for judging alone and for judging plus
timing (fingerprint, both histograms, slow verdict), and their ratio. Run:

    .venv/bin/python bench/comparator.py
"""

from __future__ import annotations

import argparse
import time

from twinkly.compare.comparator import Comparator
from twinkly.compare.shared_state import ComparisonSettings, Monitor
from twinkly.perf.latency import SlowQuerySettings
from twinkly.report.sink import MemorySink
from twinkly.tracking.responses import StatementResult
from twinkly.wire.frontend import Bind

SIMPLE = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
EXTENDED = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"


def pairs(count: int, extended: bool) -> list[tuple[StatementResult, StatementResult]]:
    out = []
    for i in range(count):
        if extended:
            bind = Bind("", "", (0,), (str(i).encode(),), ()).payload()
            context = (EXTENDED, bind, (23,))
            request = "E"
        else:
            context = (SIMPLE.format(i), None, ())
            request = "Q"
        results = []
        for elapsed in (0.0002, 0.0003):
            result = StatementResult(request, 1000.0, i << 20, context)
            result.finished = 1000.0 + elapsed
            result.rows, result.digest, result.tag = 1, 12345, b"SELECT 1"
            results.append(result)
        out.append((results[0], results[1]))
    return out


def per_statement(count: int, extended: bool, timing: bool) -> float:
    settings = ComparisonSettings(slow=SlowQuerySettings(enabled=timing))
    monitor = Monitor(settings, MemorySink(), ("pg15", "pg18"))
    comparator = Comparator(monitor, None, None, time.time)
    if not timing:
        comparator._time = lambda truth, target: None  # type: ignore[method-assign]
    work = pairs(count, extended)
    start = time.perf_counter()
    for truth, target in work:
        comparator.statements_paired(truth, target)
    return (time.perf_counter() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for extended in (False, True):
        judged, timed = [], []
        for _ in range(args.rounds):  # interleaved, so both see the same machine
            judged.append(per_statement(args.statements, extended, False))
            timed.append(per_statement(args.statements, extended, True))
        judged.sort()
        timed.sort()
        a, b = judged[len(judged) // 2], timed[len(timed) // 2]
        mode = "extended" if extended else "simple"
        print(f"{mode:8}  judge {a:6.2f} us  judge+time {b:6.2f} us  ratio {b / a:4.2f}")


if __name__ == "__main__":
    main()

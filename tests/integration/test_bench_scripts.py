"""The benchmark scripts still run against the code they measure: an API change that
breaks one is found here, not on the day someone needs the figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def bench(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_comparator_benchmark_judges_and_times() -> None:
    out = bench("comparator.py", "--statements", "2000", "--rounds", "1")
    for mode in ("simple", "extended"):
        line = re.search(rf"^{mode} +judge +([\d.]+) us +judge\+time +([\d.]+) us", out, re.M)
        assert line is not None, out
        assert float(line[1]) > 0 and float(line[2]) > 0


@pytest.mark.parametrize("script", ["run.py", "instructions.py"])
def test_the_other_benchmarks_start(script: str) -> None:
    """Their imports and arguments (a whole run needs servers, and minutes)."""
    assert "--baseline" in bench(script, "--help")

"""The processes a benchmark run measures: Twinkly as ``twistd`` and the C fan-out relay,
each a subprocess whose CPU and memory are read from the process table."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `python bench/run.py` puts bench/, not the repo, on sys.path

from devtools.sandbox import HOST, PG15_BINDIR, USERS, Server  # noqa: E402

USER, PASSWORD, DBNAME = "twinkly", USERS["twinkly"], "app"
# One client build for every target, so client-side cost is identical everywhere.
PGBENCH, PSQL = str(PG15_BINDIR / "pgbench"), str(PG15_BINDIR / "psql")
MB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def client_env() -> dict[str, str]:
    """Environment for pgbench/psql: no inherited PG* variable, and no TLS anywhere.

    The servers offer TLS and libpq prefers it, which would slow the direct connections only
    (Twinkly and pgbouncer talk plain TCP to the backends) and skew the ratios.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGSSLMODE="disable", PGPASSWORD=PASSWORD, PGCONNECT_TIMEOUT="10", LC_ALL="C")
    return env


def free_port() -> int:
    """A port the kernel just handed out; the tiny race is acceptable for a benchmark."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ProxyProcess:
    """A proxy under test: started, listened for, measured and stopped by its PID."""

    name = "proxy"
    cmd: list[str]

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        workdir.mkdir(exist_ok=True)
        self.env = env or {}
        self.port, self.log_path = free_port(), workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.rss_at_start: float | None = None

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        with open(self.log_path, "wb") as out:
            # Own session: a Ctrl-C reaches only us, so it is stopped in order, by PID.
            self.proc = subprocess.Popen(
                self.cmd, cwd=self.log_path.parent, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
                self.rss_at_start = self.rss()
                return
            time.sleep(0.05)
        exit_code = self.proc.poll()
        raise RuntimeError(f"{self.name} did not listen on port {self.port} (exit {exit_code})")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def rss(self) -> float:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).memory_info().rss / MB

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its children (Twinkly's workers), running
        or ended (from /proc)."""
        assert self.proc is not None
        process = psutil.Process(self.proc.pid)
        t = process.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                total += c.user + c.system
        return total

    def stop(self) -> None:
        """SIGTERM (graceful, bounded by shutdown-timeout), then SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Twinkly(ProxyProcess):
    """Twinkly as a real ``twistd`` subprocess, configured exactly as a user would."""

    name = "twistd"

    def __init__(
        self,
        workdir: Path,
        pg15: Server,
        pg18: Server,
        extra: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(workdir, env)
        q = json.dumps
        sections = "".join(
            f"  {key} {{ label = {q(s.label)}, host = {q(s.host)}, port = {s.port},"
            f" user = {q(USER)}, password = {q(PASSWORD)}, database = {q(DBNAME)}, tls = disable"
            " }\n"
            for key, s in (("postgresql", pg15), ("yugabytedb", pg18))
        )
        config = workdir / "twinkly.conf"
        config.write_text(
            f"proxy {{\n  listen-address = {q(HOST)}\n  listen-port = {self.port}\n"
            f"  shutdown-timeout = 2\n  auth {{ method = trust }}\n{sections}}}\n"
            'comparison { enabled = true, source-of-truth = "postgresql" }\n' + extra
        )
        twistd = Path(sys.executable).parent / "twistd"
        self.cmd = [str(twistd), "-n", "--pidfile=", "twinkly", "--config", str(config)]

    def accelerator(self) -> str:
        """What the start-up log says runs: "C" or "pure-Python"."""
        match = re.search(r"hot path: (\S+) implementation", self.log_tail(100_000))
        return match.group(1) if match else "?"


class Relay(ProxyProcess):
    """bench/relay.py: every statement on both servers, the truth's bytes back, nothing
    compared. Its TPS is the most a fan-out proxy gets here; its CPU, the least it spends."""

    name = "relay"

    def __init__(self, workdir: Path, pg15: Server, pg18: Server) -> None:
        super().__init__(workdir)
        self.cmd = [
            sys.executable, str(REPO / "bench" / "relay.py"), "--listen", str(self.port),
            "--truth", f"{pg15.host}:{pg15.port}", "--target", f"{pg18.host}:{pg18.port}",
            "--user", USER, "--password", PASSWORD, "--database", DBNAME,
        ]  # fmt: skip


def baseline_tree(rev: str, tree: Path) -> Path:
    """A checkout of ``rev`` (a git worktree of this repository), with its C extension
    built in place when that revision has one."""
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(tree), rev],
        check=True, capture_output=True,
    )  # fmt: skip
    if (tree / "setup.py").exists():
        subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
            cwd=tree, check=True, capture_output=True,
        )  # fmt: skip
    return tree


def remove_tree(tree: Path) -> None:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True
    )

"""Run the drivers' own test suites directly against the source of truth and through Twinkly.

Not part of CI (it downloads the suites and takes a long while). For each suite it prepares
a virtualenv with the driver at a fixed version, starts a fresh pair of sandbox servers
(PostgreSQL 15, the truth, and 18, the target), runs the suite against the truth, starts
again from fresh servers, runs the suite through a Twinkly in front of both, and prints
the totals both ways and the tests that fail only through Twinkly.

Where each suite comes from:

* pg8000 and asyncpg: their PyPI sdists hold their tests (``pip download --no-binary``).
* psycopg: the sdist has no tests; set ``PSYCOPG_SRC`` to a source checkout of the same
  version (its ``tests/`` directory is used; the driver itself comes from PyPI).
* node-postgres: the npm package ``pg`` ships no tests; set ``NODE_PG_SRC`` to a checkout of
  the node-postgres repository at the matching tag (see ``--help``).

Run it through ``scripts/peer-suites.sh``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "twinkly-pw"  # the sandbox's twinkly role; the script gives postgres the same
VERSIONS = {"psycopg": "3.3.4", "asyncpg": "0.31.0", "pg8000": "1.31.4", "node-pg": "8.23.0"}


def log(msg: str) -> None:
    print(f"[peer-suites] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: object) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def free_port(wanted: int) -> int:
    for port in range(wanted, wanted + 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port from {wanted}")


# --- the suites ------------------------------------------------------------------------


@dataclass
class Endpoint:
    """Where a suite connects: the truth directly, or Twinkly."""

    host: str
    port: int
    user: str = "postgres"
    password: str = PASSWORD


@dataclass
class Suite:
    name: str
    version: str
    work: Path
    venv: Path = field(init=False)
    tests: Path = field(init=False)  # the directory pytest runs in
    extra_args: list[str] = field(default_factory=list)  # --pytest-args

    def __post_init__(self) -> None:
        self.venv = self.work / f"venv-{self.name}"

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def _venv(self, packages: list[str]) -> None:
        stamp = self.venv / ".peer-suites"
        wanted = " ".join(packages)
        if stamp.exists() and stamp.read_text() == wanted:
            return
        run([sys.executable, "-m", "venv", "--clear", str(self.venv)])
        run([self.python, "-m", "pip", "install", "-q", *packages])
        stamp.write_text(wanted)

    def _sdist(self) -> Path:
        """Download and unpack the sdist; returns its top directory."""
        downloads = self.work / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        top = self.work / "src" / f"{self.name}-{self.version}"
        if top.is_dir():
            return top
        spec = f"{self.name}=={self.version}"
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(downloads),
                spec,
            ]
        )
        archive = next(downloads.glob(f"{self.name}-{self.version}.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(self.work / "src", filter="data")
        return top

    def prepare(self) -> None:
        raise NotImplementedError

    def args(self, junit: Path) -> list[str]:
        raise NotImplementedError

    def environment(self, endpoint: Endpoint) -> dict[str, str]:
        return {}

    def pytest(self, junit: Path, *args: str) -> list[str]:
        return [
            self.python,
            "-m",
            "pytest",
            "-q",
            "-o",
            f"cache_dir={self.work / 'pytest-cache' / self.name}",  # psycopg's conftest uses it
            "-o",
            "junit_family=xunit1",
            f"--junitxml={junit}",
            "--timeout=120",
            *args,
            *self.extra_args,
        ]


class Pg8000(Suite):
    def prepare(self) -> None:
        top = self._sdist()
        # scramp 1.5 dropped make_channel_binding, which pg8000 1.31.4 calls.
        self._venv(
            [
                f"pg8000=={self.version}",
                "scramp<1.5",
                "pytest",
                "pytest-mock",
                "pytest-benchmark",
                "pytest-timeout",
                "pytz",
            ]
        )
        # Run the tests outside the sdist, so that the installed pg8000 is the one imported.
        self.tests = self.work / "run-pg8000"
        if not self.tests.exists():
            self.tests.mkdir()
            shutil.copytree(top / "test", self.tests / "test")

    def args(self, junit: Path) -> list[str]:
        # The auth tests need roles and pg_hba.conf lines of their own.
        ignore = [f"--ignore=test/{api}/auth" for api in ("dbapi", "legacy", "native")]
        return self.pytest(junit, "test", *ignore)

    def environment(self, endpoint: Endpoint) -> dict[str, str]:
        # pg8000's fixtures read these three; the user is always "postgres".
        return {
            "PGHOST": endpoint.host,
            "PGPORT": str(endpoint.port),
            "PGPASSWORD": endpoint.password,
        }


class Asyncpg(Suite):
    def prepare(self) -> None:
        top = self._sdist()
        self._venv([f"asyncpg=={self.version}", "pytest", "pytest-timeout", "distro"])
        self.tests = self.work / "run-asyncpg"
        if not self.tests.exists():
            self.tests.mkdir()
            shutil.copytree(top / "tests", self.tests / "tests")

    def args(self, junit: Path) -> list[str]:
        return self.pytest(junit, "tests")

    def environment(self, endpoint: Endpoint) -> dict[str, str]:
        # With PGHOST set, asyncpg's test base uses the running server instead of its own.
        return {
            "PGHOST": endpoint.host,
            "PGPORT": str(endpoint.port),
            "PGUSER": endpoint.user,
            "PGPASSWORD": endpoint.password,
            "PGDATABASE": "postgres",
        }


class Psycopg(Suite):
    def prepare(self) -> None:
        src = os.environ.get("PSYCOPG_SRC")
        if not src or not (Path(src) / "tests" / "conftest.py").exists():
            raise SystemExit(
                "psycopg: its sdist has no tests; set PSYCOPG_SRC to a source checkout of"
                f" psycopg {self.version} (e.g. git archive {self.version} | tar -x -C DIR)"
            )
        self.tests = Path(src)
        # The pool from the same checkout (psycopg_pool is versioned on its own).
        self._venv(
            [
                f"psycopg[binary]=={self.version}",
                str(self.tests / "psycopg_pool"),
                "pytest",
                "pytest-timeout",
                "anyio",
                "pproxy",
            ]
        )

    def args(self, junit: Path) -> list[str]:
        return self.pytest(junit, "tests", "-m", "not slow", "-p", "no:randomly")

    def environment(self, endpoint: Endpoint) -> dict[str, str]:
        dsn = (
            f"host={endpoint.host} port={endpoint.port} user={endpoint.user}"
            f" password={endpoint.password} dbname=app"
        )
        return {"PSYCOPG_TEST_DSN": dsn}


class NodePg(Suite):
    """node-postgres: each test file is its own node process that stops at its first
    failure; this script runs them one by one and writes a JUnit report itself."""

    # The packages the pg workspace links, at the versions of the checkout's tag.
    NPM = [
        "pg-connection-string@2.14.0",
        "pg-pool@3.14.0",
        "pg-protocol@1.16.0",
        "pg-types@2.2.0",
        "pgpass@1.0.5",
        "async@2.6.4",
        "bluebird@3.7.2",
        "co@4.6.0",
        "pg-copy-streams@0.3.0",
    ]

    def prepare(self) -> None:
        src = os.environ.get("NODE_PG_SRC")
        pg = Path(src or "") / "packages" / "pg"
        if not src or not (pg / "test" / "integration").is_dir():
            raise SystemExit(
                "node-pg: the npm package has no tests; set NODE_PG_SRC to a checkout of"
                f" node-postgres at tag pg@{self.version}"
            )
        self.tests = self.work / "run-node-pg"
        if not (self.tests / "node_modules").is_dir():
            shutil.rmtree(self.tests, ignore_errors=True)
            self.tests.mkdir()
            for part in ("lib", "test"):
                shutil.copytree(pg / part, self.tests / part)
            # Not the package's own package.json: its devDependencies are a toolchain.
            (self.tests / "package.json").write_text(
                json.dumps({"name": "pg-tests", "version": self.version})
            )
            run(
                [
                    "npm",
                    "install",
                    "--no-save",
                    "--no-package-lock",
                    "--legacy-peer-deps",
                    "--no-audit",
                    "--no-fund",
                    *self.NPM,
                ],
                cwd=self.tests,
            )

    def args(self, junit: Path) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--node-runner", str(junit)]

    def environment(self, endpoint: Endpoint) -> dict[str, str]:
        return {
            "PGHOST": endpoint.host,
            "PGPORT": str(endpoint.port),
            "PGUSER": endpoint.user,
            "PGPASSWORD": endpoint.password,
            "PGDATABASE": "postgres",
        }


def node_runner(junit: Path) -> int:
    """Run every test/integration/**/*-tests.js (cwd: a NodePg run dir) into ``junit``."""
    suite = ET.Element("testsuite")
    files = sorted(Path("test/integration").rglob("*-tests.js"))
    for path in files:
        name = str(path)
        try:
            proc = subprocess.run(["node", name], capture_output=True, timeout=120)
            out, code = proc.stdout.decode("utf-8", "replace"), proc.returncode
        except subprocess.TimeoutExpired as e:
            out, code = (e.stdout or b"").decode("utf-8", "replace") + "\n[timed out]", -9
        failed_test = None
        for line in out.splitlines():
            text = line.strip()
            if text.endswith("✔"):
                ET.SubElement(suite, "testcase", classname=name, name=text[:-1].strip())
            elif text.endswith("? - SKIPPED"):
                case = ET.SubElement(suite, "testcase", classname=name, name=text[:-11].strip())
                ET.SubElement(case, "skipped")
            elif text.endswith("FAILED!"):
                failed_test = text[:-7].strip()
        if code != 0:
            case = ET.SubElement(suite, "testcase", classname=name, name=failed_test or "(file)")
            ET.SubElement(case, "failure", message=f"exit {code}").text = out[-4000:]
        print(f"{name}: exit {code}", flush=True)
        if code != 0:
            print(out[-2000:], flush=True)
    ET.ElementTree(suite).write(junit, encoding="utf-8")
    return 0


SUITES: dict[str, type[Suite]] = {
    "pg8000": Pg8000,
    "asyncpg": Asyncpg,
    "psycopg": Psycopg,
    "node-pg": NodePg,
}


# --- results ---------------------------------------------------------------------------


@dataclass
class Result:
    totals: dict[str, int]
    failed: set[str]  # test ids that failed or errored
    note: str = ""


def read_junit(path: Path) -> Result:
    totals = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failed: set[str] = set()
    if not path.exists():
        return Result(totals, failed, "no junit report (the run was cut short)")
    for case in ET.parse(path).iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            totals["failed"] += 1
            failed.add(test_id)
        elif "error" in kinds:
            totals["error"] += 1
            failed.add(test_id)
        elif "skipped" in kinds:
            totals["skipped"] += 1
        else:
            totals["passed"] += 1
    return Result(totals, failed)


# --- servers and Twinkly ---------------------------------------------------------------


@contextlib.contextmanager
def sandbox(
    work: Path, given: tuple[Endpoint, Endpoint] | None
) -> Iterator[tuple[Endpoint, Endpoint]]:
    """Fresh servers (or the given ones); both get a postgres role with PASSWORD."""
    if given is not None:
        yield given
        return
    from twinkly.sandbox import Sandbox

    base = work / "sandbox"
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    box = Sandbox(base)
    try:
        servers = box.start()
        for server in servers:
            server.psql_admin(f"ALTER ROLE postgres PASSWORD '{PASSWORD}'")
        yield (
            Endpoint(servers[0].host, servers[0].port),
            Endpoint(servers[1].host, servers[1].port),
        )
    finally:
        box.stop()


def twinkly_config(port: int, truth: Endpoint, target: Endpoint, workdir: Path, trace: bool) -> str:
    def backend(label: str, e: Endpoint) -> str:
        # No user or database: the client's, as a user would configure a transparent proxy.
        return (
            f'{{ label = "{label}", host = "{e.host}", port = {e.port},'
            f' password = "{e.password}" }}'
        )

    lines = [
        f"proxy {{ listen-port = {port}",
        f"  postgresql = {backend('truth', truth)}",
        f"  yugabytedb = {backend('target', target)} }}",
        f'reporting.events-file = "{workdir / "events.jsonl"}"',
    ]
    extra = os.environ.get("PEER_TWINKLY_CONF")
    if extra:  # e.g. proxy.tls { cert-file, key-file } for the drivers' TLS tests
        lines.append(Path(extra).read_text())
    if trace:
        trace_file = workdir / "protocol.log"
        lines.append(
            f'debug {{ log-protocol = true, log-protocol-file = "{trace_file}",'
            " log-protocol-max-bytes = 2000000000 }"
        )
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def twinkly(work: Path, truth: Endpoint, target: Endpoint, trace: bool) -> Iterator[Endpoint]:
    port = free_port(int(os.environ.get("TWINKLY_PORT", "55431")))
    workdir = work / "twinkly"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    config = workdir / "twinkly.conf"
    config.write_text(twinkly_config(port, truth, target, workdir, trace))
    twistd = Path(sys.executable).with_name("twistd")
    with open(workdir / "twistd.log", "wb") as logfile:
        proc = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "twinkly", "--config", str(config)],
            cwd=workdir,
            stdout=logfile,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Twinkly exited at start-up; see {workdir / 'twistd.log'}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("Twinkly did not start listening")
            time.sleep(0.2)
        yield Endpoint("127.0.0.1", port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_suite(suite: Suite, endpoint: Endpoint, junit: Path, timeout: float) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PSYCOPG_TEST"))}
    env.update(suite.environment(endpoint))
    junit.unlink(missing_ok=True)
    out = junit.with_suffix(".out")
    log(f"{suite.name}: running against {endpoint.host}:{endpoint.port} (output in {out})")
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            suite.args(junit),
            cwd=suite.tests,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as stop:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if isinstance(stop, KeyboardInterrupt):
                raise
            result = read_junit(junit)
            result.note = f"stopped after {timeout:.0f} s"
            return result
    return read_junit(junit)


# --- main ------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def parse_endpoint(text: str | None) -> Endpoint | None:
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return Endpoint(
        host or "127.0.0.1",
        int(port),
        os.environ.get("PEER_USER", "postgres"),
        os.environ.get("PEER_PASSWORD", PASSWORD),
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--node-runner"]:
        return node_runner(Path(argv[1]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "suites",
        nargs="*",
        default=["pg8000", "asyncpg"]
        + (["psycopg"] if os.environ.get("PSYCOPG_SRC") else [])
        + (["node-pg"] if os.environ.get("NODE_PG_SRC") else []),
        help=f"of {', '.join(SUITES)} (default: those whose tests are at hand)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("PEER_WORK", "/var/tmp/twinkly-peers")),
        help="downloads, venvs and reports (env PEER_WORK)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("PEER_TIMEOUT", "1800")),
        help="seconds per suite run (env PEER_TIMEOUT)",
    )
    parser.add_argument("--only", choices=("both", "direct", "twinkly"), default="both")
    parser.add_argument("--trace", action="store_true", help="Twinkly writes a protocol trace")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments (e.g. -k NAME)")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that Twinkly, the suite and the servers are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    truth_given, target_given = (
        parse_endpoint(os.environ.get("PEER_TRUTH")),
        parse_endpoint(os.environ.get("PEER_TARGET")),
    )
    given = (truth_given, target_given) if truth_given and target_given else None
    args.work.mkdir(parents=True, exist_ok=True)
    args.work.chmod(0o755)

    summary = {}
    for name in args.suites:
        suite = SUITES[name](name, VERSIONS[name], args.work)
        suite.prepare()
        suite.extra_args = args.pytest_args.split()
        reports = args.work / "reports"
        reports.mkdir(exist_ok=True)
        results: dict[str, Result] = {}
        for way in ("direct", "twinkly"):
            if args.only not in ("both", way):
                continue
            with sandbox(args.work, given) as (truth, target):
                junit = reports / f"{name}-{way}.xml"
                if way == "direct":
                    results[way] = run_suite(suite, truth, junit, args.timeout)
                else:
                    with twinkly(args.work, truth, target, args.trace) as proxy:
                        results[way] = run_suite(suite, proxy, junit, args.timeout)
        summary[name] = results
        report(name, suite.version, results)
    # One summary for all runs so far: a suite's entry is replaced by its newest run.
    path = args.work / "reports" / "summary.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(
        {
            n: {
                w: {"totals": r.totals, "failed": sorted(r.failed), "note": r.note}
                for w, r in res.items()
            }
            for n, res in summary.items()
        }
    )
    path.write_text(json.dumps(merged, indent=1))
    return 0


def report(name: str, version: str, results: dict[str, Result]) -> None:
    print(f"\n== {name} {version}")
    for way, r in results.items():
        t = r.totals
        print(
            f"  {way:8} passed {t['passed']:5}  failed {t['failed']:4}  errors {t['error']:4}"
            f"  skipped {t['skipped']:4}  {r.note}"
        )
    if "direct" in results and "twinkly" in results:
        only = sorted(results["twinkly"].failed - results["direct"].failed)
        print(f"  failing only through Twinkly: {len(only)}")
        for test_id in only:
            print(f"    {test_id}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())

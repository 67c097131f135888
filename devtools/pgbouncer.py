"""Run Debian's pgbouncer in front of a sandbox server: the proxy a user would otherwise pick.

The benchmark measures Twinkly against it, so it gets a plain, typical configuration:
transaction pooling, SCRAM client auth from a userlist file, TCP on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from devtools.sandbox import HOST, OS_USER, USERS, Server


def _ensure_installed() -> str:
    """Path of pgbouncer, apt-installing Debian's package when missing (root only)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("pgbouncer not found; as root run: apt-get install pgbouncer")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "pgbouncer"]):
        print(f"[devtools.pgbouncer] {' '.join(cmd)}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)
    found = shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if not found:
        raise RuntimeError("apt-get install pgbouncer did not provide a pgbouncer binary")
    return found


def _ini(server: Server, port: int, workdir: Path) -> str:
    return f"""[databases]
* = host={server.host} port={server.port}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
unix_socket_dir = {workdir}
auth_type = scram-sha-256
auth_file = {workdir / "userlist.txt"}
admin_users = twinkly
pool_mode = transaction
max_client_conn = 100
default_pool_size = 20
server_tls_sslmode = disable
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits,options
logfile = {workdir / "pgbouncer.log"}
pidfile = {workdir / "pgbouncer.pid"}
"""


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, workdir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    stop_pgbouncer(proc)
    tail = ""
    for name in ("pgbouncer.stderr", "pgbouncer.log"):
        if (workdir / name).exists():
            tail += (workdir / name).read_text(errors="replace")[-2000:]
    raise RuntimeError(
        f"pgbouncer did not listen on {HOST}:{port} (exit {proc.returncode})\n{tail}"
    )


def run_pgbouncer(
    server: Server, port: int, workdir: Path, timeout: float = 15.0
) -> subprocess.Popen[bytes]:
    """Start pgbouncer for ``server`` on ``port``; returns once it accepts connections.

    pgbouncer refuses to run as root, so as root the process runs as the postgres user (via
    Popen's user/group, so the returned Popen is pgbouncer itself and terminate() reaches it).
    """
    binary = _ensure_installed()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    userlist = workdir / "userlist.txt"
    userlist.write_text(f'"twinkly" "{USERS["twinkly"]}"\n')
    userlist.chmod(0o600)
    (workdir / "pgbouncer.ini").write_text(_ini(server, port, workdir))
    uid = gid = None
    if os.geteuid() == 0:
        pw = pwd.getpwnam(OS_USER)
        uid, gid = pw.pw_uid, pw.pw_gid
        workdir.chmod(0o755)
        for path in (workdir, userlist, workdir / "pgbouncer.ini"):
            os.chown(path, uid, gid)
    with open(workdir / "pgbouncer.stderr", "wb") as err:  # early config errors land here
        proc = subprocess.Popen(
            [binary, str(workdir / "pgbouncer.ini")],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )
    _wait_for_port(proc, port, workdir, timeout)
    return proc


def stop_pgbouncer(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate (SIGTERM = immediate shutdown) and reap; kill if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

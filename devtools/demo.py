"""The embedded default: two throwaway PostgreSQL servers and Twinkly in front of them.

``python -m devtools.demo`` starts PostgreSQL 15 (source of truth) and 18 (target) from
the sandbox, writes a configuration for them, and runs ``twistd -n twinkly`` in the
foreground until Ctrl-C; then it stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from devtools.sandbox import Sandbox, Server


def demo_config(truth: Server, target: Server, listen_port: int, http_port: int) -> str:
    def backend(server: Server) -> str:
        return (
            f'{{ label = "{server.label}", host = "{server.host}", port = {server.port},'
            ' user = "twinkly", password = "twinkly-pw", database = "app" }'
        )

    return (
        f"proxy {{\n  listen-address = 127.0.0.1\n  listen-port = {listen_port}\n"
        f"  postgresql = {backend(truth)}\n  yugabytedb = {backend(target)}\n"
        '  admin { users = ["twinkly"] }\n}\n'
        "comparison { enabled = true, source-of-truth = postgresql }\n"
        f"monitoring.http {{ enabled = true, port = {http_port} }}\n"
    )


def direct_psql(server: Server) -> str:
    """The line that reaches one server directly, bypassing Twinkly (with its own psql)."""
    try:
        psql = str(server.binary("psql"))
    except FileNotFoundError:
        psql = "psql"
    return f"PGPASSWORD=twinkly-pw {psql} -h {server.host} -p {server.port} -U twinkly app"


def banner(truth: Server, target: Server, listen_port: int, http_port: int, workdir: Path) -> str:
    """What the demo prints once everything runs: where to connect, where the events go."""
    events = workdir / "reports" / "twinkly-events.jsonl"  # twistd runs in workdir
    return (
        f"\nTwinkly: source of truth PostgreSQL {truth.major} on port {truth.port},"
        f" target PostgreSQL {target.major} on port {target.port}.\n"
        f"Connect with:\n\n  PGPASSWORD=twinkly-pw psql -h 127.0.0.1 -p {listen_port}"
        f" -U twinkly app\n\nDashboard: http://127.0.0.1:{http_port}/"
        f"   Admin console: psql -h 127.0.0.1 -p {listen_port} -U twinkly twinkly\n"
        f"\nEvents file: {events}\n"
        f"  .venv/bin/twinkly report {events}\n"
        "\nEach server directly (bypassing Twinkly, e.g. to make them differ):\n"
        f"  truth  ({truth.label}): {direct_psql(truth)}\n"
        f"  target ({target.label}): {direct_psql(target)}\n"
        "\nCtrl-C stops Twinkly and both servers.\n"
    )


def twistd_command(config_path: Path) -> list[str]:
    twistd = Path(sys.executable).with_name("twistd")
    return [str(twistd), "-n", "--pidfile=", "twinkly", "--config", str(config_path)]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Ctrl-C and SIGTERM both stop Twinkly and the servers (a background job would
    # otherwise ignore SIGINT, and SIGTERM would leave the servers running).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    listen_port = int(os.environ.get("TWINKLY_PORT", "5431"))
    http_port = int(os.environ.get("TWINKLY_HTTP_PORT", "9187"))
    with Sandbox() as sandbox:
        truth, target = sandbox.start()
        workdir = Path(tempfile.mkdtemp(prefix="twinkly-demo-"))
        config_path = workdir / "twinkly.conf"
        config_path.write_text(demo_config(truth, target, listen_port, http_port))
        print(banner(truth, target, listen_port, http_port, workdir), flush=True)
        proxy = subprocess.Popen(twistd_command(config_path), cwd=workdir)
        try:
            return proxy.wait()
        except KeyboardInterrupt:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait()
            return 0  # stopped on request


if __name__ == "__main__":
    sys.exit(main())

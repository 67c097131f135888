"""What a user installs and runs: the wheel carries the twistd plugin, twistd documents
the options, a bad configuration stops start-up naming the key, shipped configs load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from twinkly.config.schema import load

REPO = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")


def twistd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [str(TWISTD), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_wheel_carries_the_plugin_and_the_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("twinkly-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/twinkly_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names, "would shadow Twisted's own plugins"
    assert {"twinkly/app/tap.py", "twinkly/wire/framing.py", "twinkly/proxy/session.py"} <= names
    # Built with the machine's compiler: the C accelerator is in the wheel.
    assert [n for n in names if n.startswith("twinkly/wire/_accel") and n.endswith(".so")]


def test_wheel_builds_without_a_compiler(tmp_path: Path) -> None:
    """The C accelerator is optional: with a compiler that always fails (CC=false) the
    wheel still builds, without the extension; Twinkly then runs its pure-Python code."""
    # A clean copy of the sources: no build/ directory, no extension built in place.
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    source = tmp_path / "src"
    for name in listed:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    env = dict(os.environ, CC="false", LDSHARED="false")
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
        env=env,
    )
    (wheel,) = out.glob("twinkly-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twinkly/wire/accel.py" in names
    assert not [n for n in names if n.startswith("twinkly/wire/_accel") and n.endswith(".so")]


def test_twistd_help_documents_the_options(tmp_path: Path) -> None:
    result = twistd("twinkly", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--config", "--listen", "--source-of-truth", "--manhole-port"):
        assert option in result.stdout
    assert "twinkly.ops.logs.json_observer" in result.stdout  # JSON logs, documented


def test_manhole_port_without_users_is_refused(tmp_path: Path) -> None:
    result = twistd(
        "-n",
        "--pidfile=",
        "twinkly",
        "--config",
        str(REPO / "conf/twinkly.conf"),
        "--manhole-port",
        "2222",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "monitoring.manhole.users" in result.stderr + result.stdout


def test_bad_configuration_stops_startup_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.conf"
    config.write_text("proxy { listen-port = 5431, postgresql { prot = 5432 } }\n")
    result = twistd("-n", "--pidfile=", "twinkly", "--config", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert "proxy.postgresql.prot: unknown configuration key" in result.stderr + result.stdout


def test_bad_override_stops_startup(tmp_path: Path) -> None:
    result = twistd(
        "-n",
        "--pidfile=",
        "twinkly",
        "--config",
        str(REPO / "conf/twinkly.conf"),
        "--source-of-truth",
        "oracle",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "comparison.source-of-truth" in result.stderr + result.stdout


def test_shipped_configurations_load() -> None:
    default = load(REPO / "conf" / "twinkly.conf")
    assert (default.truth.label, default.target.label) == ("pg15", "pg18")
    docker = load(REPO / "docker" / "twinkly.conf")
    assert (docker.truth.host, docker.target.host, docker.target.port) == (
        "postgres",
        "yugabytedb",
        5433,
    )
    compose = (REPO / "docker" / "compose.yml").read_text()
    assert "./twinkly.conf:/etc/twinkly/twinkly.conf" in compose


def test_compose_file_is_valid() -> None:
    """No Docker engine runs here; docker-compose still parses and validates the file."""
    result = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker" / "compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "yugabytedb/yugabyte" in result.stdout
    mounted = load(REPO / "docker" / "twinkly.conf")
    assert mounted.monitoring.http.enabled and mounted.proxy.admin.users == ("postgres",)


def test_json_log_lines() -> None:
    """``twistd --logger twinkly.ops.logs.json_observer``: one JSON object per line."""
    code = (
        "from twisted.logger import Logger, globalLogBeginner;"
        "from twinkly.ops.logs import json_observer;"
        "globalLogBeginner.beginLoggingTo([json_observer()], redirectStandardIO=False);"
        "Logger().info('SQL error on {backend}', backend='pg18', sqlstate='23505')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    import json

    (line,) = [x for x in result.stdout.splitlines() if x.strip()]
    event = json.loads(line)
    assert event["backend"] == "pg18" and event["sqlstate"] == "23505"
    assert event["log_format"] == "SQL error on {backend}"


def test_twistd_writes_json_lines_with_the_logger_option(tmp_path: Path) -> None:
    import json
    import signal

    config = tmp_path / "json.conf"
    config.write_text(
        "proxy { listen-port = 0, postgresql { port = 1 }, yugabytedb { port = 2 } }\n"
        "monitoring.progress-interval = 0\n"
        f'reporting.events-file = "{tmp_path / "events.jsonl"}"\n'
    )
    command = [str(TWISTD), "--logger", "twinkly.ops.logs.json_observer", "-n", "--pidfile="]
    command += ["twinkly", "--config", str(config)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    import threading

    guard = threading.Timer(60, process.kill)  # a twistd that never listens fails the test
    guard.start()
    try:
        lines = []
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(json.loads(line))  # every line is one JSON object
            if "Twinkly listening" in lines[-1].get("log_format", ""):
                break
        listening = lines[-1]
        assert listening["log_namespace"] == "twinkly.app.service"
        assert listening["host"] == "127.0.0.1" and listening["port"] > 0  # named fields
    finally:
        guard.cancel()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def test_manhole_port_option_opens_the_manhole(tmp_path: Path) -> None:
    """``--manhole-port`` overrides the file and enables the manhole: it answers SSH."""
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "manhole.conf"
    config.write_text(
        "proxy { listen-port = 0, postgresql { port = 1 }, yugabytedb { port = 2 } }\n"
        'monitoring { progress-interval = 0, manhole.users { admin = "s3cret" } }\n'
        f'reporting.events-file = "{tmp_path / "events.jsonl"}"\n'
    )
    command = [str(TWISTD), "-n", "--pidfile=", "twinkly", "--config", str(config)]
    command += ["--manhole-port", str(port)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as ssh:
                    assert ssh.recv(64).startswith(b"SSH-2.0-")
                break
            except OSError:
                assert process.poll() is None, "twistd exited"
                assert time.monotonic() < deadline, "no manhole on --manhole-port"
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(30)

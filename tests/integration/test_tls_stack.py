"""twistd's Twinkly keeps pyOpenSSL and cryptography out of a process that uses no TLS,
and loads them where TLS is configured: checked in fresh interpreters, before and after
the reactor is imported, as twistd does it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys
from twinkly.app import tls_stack
from twinkly.config.schema import loads
config = loads('''proxy {{ postgresql {{ port = 1 {tls} }}, yugabytedb {{ port = 2 }} }}''')
blocked = tls_stack.keep_unloaded(config, manhole={manhole})
from twisted.internet import reactor, tcp
print(json.dumps({{
    "blocked": blocked,
    "loaded": tls_stack.loaded(),
    "cryptography": "cryptography" in sys.modules,
    "start_tls": hasattr(tcp.Server, "startTLS"),
}}))
"""


def probe(tls: str = "", manhole: bool = False) -> dict[str, bool]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(tls=tls, manhole=manhole)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_no_tls_configured_keeps_the_stack_out() -> None:
    assert probe() == {
        "blocked": True, "loaded": False, "cryptography": False, "start_tls": False,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("tls", "manhole"), [(", tls = prefer", False), ("", True)], ids=["backend-tls", "manhole"]
)
def test_tls_or_a_manhole_loads_it(tls: str, manhole: bool) -> None:
    assert probe(tls, manhole) == {
        "blocked": False, "loaded": True, "cryptography": True, "start_tls": True,
    }  # fmt: skip

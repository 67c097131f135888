"""Which configurations need Twisted's TLS stack, and that a process already holding
Twisted's TCP module is never changed (the block is for twistd's start, before the reactor)."""

from __future__ import annotations

import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from twinkly.app import tls_stack
from twinkly.config.schema import loads

BASE = (
    "proxy {{ {proxy}\n postgresql {{ label = pg15, port = 1 {truth} }}\n"
    " yugabytedb {{ label = pg18, port = 2 }}\n}}\n{rest}"
)


def config(proxy: str = "", truth: str = "", rest: str = ""):  # type: ignore[no-untyped-def]
    return loads(BASE.format(proxy=proxy, truth=truth, rest=rest))


class NeededTests(SynchronousTestCase):
    def test_the_default_configuration_needs_no_tls(self) -> None:
        self.assertFalse(tls_stack.needed(config()))

    def test_a_backend_with_tls_needs_it(self) -> None:
        for mode in ("prefer", "require"):
            self.assertTrue(tls_stack.needed(config(truth=f", tls = {mode}")), mode)

    def test_a_client_certificate_needs_it(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        for name in ("c.pem", "k.pem"):
            open(os.path.join(directory, name), "w").close()
        proxy = f'tls {{ cert-file = "{directory}/c.pem", key-file = "{directory}/k.pem" }}'
        self.assertTrue(tls_stack.needed(config(proxy=proxy)))

    def test_an_https_insight_endpoint_needs_it_and_http_does_not(self) -> None:
        ai = 'comparison.ai {{ enabled = true, endpoint = "{}://127.0.0.1:1/v1" }}'
        self.assertTrue(tls_stack.needed(config(rest=ai.format("https"))))
        self.assertFalse(tls_stack.needed(config(rest=ai.format("http"))))

    def test_the_manhole_needs_it(self) -> None:
        manhole = 'monitoring.manhole { enabled = true, users { ops = "pw" } }'
        self.assertTrue(tls_stack.needed(config(rest=manhole)))


class KeepUnloadedTests(SynchronousTestCase):
    def test_nothing_changes_once_twisted_tcp_is_loaded(self) -> None:
        import twisted.internet.tcp  # noqa: F401 - as in every process that runs tests

        before = sys.modules.get("OpenSSL", "absent")
        self.assertFalse(tls_stack.keep_unloaded(config()))
        self.assertIs(sys.modules.get("OpenSSL", "absent"), before)

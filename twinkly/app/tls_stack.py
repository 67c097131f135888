"""Twisted's TLS stack is loaded only when the configuration uses TLS.

Twisted's TCP module imports pyOpenSSL (and with it cryptography, about 11 MB resident)
the first time it is imported, to give every connection ``startTLS``. Most Twinklies use
no TLS at all: backends default to ``tls = disable``, clients get 'N' to an SSLRequest when
``proxy.tls`` has no certificate. For those, twistd's Twinkly keeps pyOpenSSL out before
the reactor is imported. Every key that could turn TLS on (``proxy.tls``, the backends,
``comparison.ai``, ``monitoring.manhole``) needs a restart, so a reload never finds the
stack missing.
"""

from __future__ import annotations

import sys

from twinkly.config.schema import Config

_BLOCKED = "OpenSSL"  # twisted.protocols.tls, twisted.internet.ssl: both start here
_TCP = "twisted.internet.tcp"


def needed(config: Config) -> bool:
    """Whether any part of this configuration can open a TLS connection."""
    proxy, comparison = config.proxy, config.comparison
    backends = (config.postgresql, config.yugabytedb)
    return (
        bool(proxy.tls_cert_file)
        or any(backend.tls != "disable" for backend in backends)
        or (comparison.ai.enabled and comparison.ai.endpoint.startswith("https://"))
        or config.monitoring.manhole.enabled  # conch loads cryptography for its keys
    )


def keep_unloaded(config: Config, manhole: bool = False) -> bool:
    """Block pyOpenSSL if ``config`` (and a manhole asked for on the command line) needs
    no TLS and nothing has loaded Twisted's TCP module yet; True when blocked. Call
    before the reactor is imported."""
    if needed(config) or manhole or _TCP in sys.modules or _BLOCKED in sys.modules:
        return False
    sys.modules[_BLOCKED] = None  # type: ignore[assignment]  # import raises ImportError
    return True


def loaded() -> bool:
    """Whether the TLS stack is in this process (for the start-up log line)."""
    return sys.modules.get(_BLOCKED) is not None

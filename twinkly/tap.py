"""twistd integration: ``twistd -n twinkly --config conf/twinkly.conf``."""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.python import usage

from twinkly.config import ConfigError, load


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    try:
        return (host.strip("[]") or "127.0.0.1", int(port))
    except ValueError:
        raise usage.UsageError(f"--listen: expected HOST:PORT or PORT, got {value!r}") from None


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Twinkly: a PostgreSQL wire-protocol proxy that runs every statement on two"
        " databases, answers with the source of truth, and pairs both answers for"
        " comparison. Options given here override the configuration file."
    )
    optParameters = [
        ["config", "c", "conf/twinkly.conf", "HOCON configuration file."],
        ["listen", "l", None, "Listen on HOST:PORT (overrides proxy.listen-*)."],
        [
            "source-of-truth",
            None,
            None,
            "postgresql or yugabytedb: whose answers the client gets"
            " (overrides comparison.source-of-truth).",
        ],
    ]

    def postOptions(self) -> None:
        try:
            config = load(self["config"])
            config = config.with_overrides(
                listen=_listen(self["listen"]) if self["listen"] else None,
                source_of_truth=self["source-of-truth"],
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self["parsed"] = config


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    from twinkly.proxy import ProxyFactory
    from twinkly.service import ProxyService

    config = options["parsed"]
    top = MultiService()
    ProxyService(ProxyFactory(config, reactor), reactor).setServiceParent(top)
    return top

"""twistd integration: ``twistd -n twinkly --config conf/twinkly.conf``."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from twisted.python import usage

from twinkly.app import tls_stack
from twinkly.config.schema import ConfigError, load

if TYPE_CHECKING:  # the service's modules import Twisted's TCP: only once TLS is decided
    from twisted.application.service import MultiService

    from twinkly.app.service import IServiceReactor


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
        " Logs as JSON lines: twistd --logger twinkly.ops.logs.json_observer -n twinkly."
        " SIGHUP reloads patterns, thresholds and switches without dropping sessions."
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
        [
            "manhole-port",
            None,
            None,
            "Open the SSH manhole on this port of monitoring.manhole.listen-address"
            " (overrides monitoring.manhole.port and enables it; needs"
            " monitoring.manhole.users).",
        ],
    ]

    # Set by the supervisor on the workers it starts (proxy.workers > 1); not for users.
    optParameters += [
        ["worker", None, None, "(internal) run as worker number N under a supervisor."],
        ["run-dir", None, None, "(internal) the workers' control sockets."],
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
        if self["manhole-port"] is not None:
            try:
                port = int(self["manhole-port"])
            except ValueError:
                raise usage.UsageError("--manhole-port: expected a port number") from None
            if not 0 <= port <= 65535 or not config.monitoring.manhole.users:
                raise usage.UsageError(
                    "--manhole-port: needs a port number and monitoring.manhole.users"
                )
            self["manhole-port"] = port
        if self["worker"] is not None:
            if self["run-dir"] is None or not self["worker"].isdigit():
                raise usage.UsageError("--worker: needs a worker number and --run-dir")
            self["worker"] = int(self["worker"])
        elif config.proxy.workers > 1 and config.proxy.listen_port == 0:
            raise usage.UsageError(
                "proxy.workers: several workers need a fixed proxy.listen-port, not 0"
            )
        self["parsed"] = config

    def overrides(self) -> list[str]:
        """The command-line overrides, as the workers are given them."""
        given = []
        for name in ("listen", "source-of-truth", "manhole-port"):
            if self[name] is not None:
                given += [f"--{name}", str(self[name])]
        return given


def makeService(options: Options, reactor: IServiceReactor | None = None) -> MultiService:
    """The service tree twistd runs; ``reactor`` is given by tests (twistd gives none)."""
    config = options["parsed"]
    if reactor is None:
        tls_stack.keep_unloaded(config, manhole=options["manhole-port"] is not None)
        from twisted.internet import reactor as installed  # noqa: TID251

        # mypy sees the module twisted.internet.reactor; installed, it is the reactor.
        reactor = cast("IServiceReactor", installed)
    from twinkly.app.wiring import WorkerPlace, build_service

    try:
        if options["worker"] is not None:
            place = WorkerPlace(options["worker"], options["run-dir"])
            return build_service(config, reactor, options["config"], options["manhole-port"], place)
        if config.proxy.workers > 1:
            from twinkly.app.workers import build_supervisor  # twisted.web: only when needed

            return build_supervisor(config, reactor, options["config"], options.overrides())
        return build_service(config, reactor, options["config"], options["manhole-port"])
    except ConfigError as e:
        raise SystemExit(f"twinkly: {e}") from None

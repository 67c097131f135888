"""``proxy.workers = N``: N worker processes behind one address, and their supervisor.

One CPython process tops out on one core. With N workers, twistd runs the supervisor:
it starts N complete proxies (``twistd -n twinkly ... --worker I --run-dir DIR``), each
listening on the same address with SO_REUSEPORT, restarts one that dies, passes a reload
on to all and stops them all on SIGTERM (each drains its sessions as a single proxy
does). The supervisor serves the HTTP status server (dashboard, ``/metrics``) for all of
them; each worker's admin console also speaks for all (``ops.cluster``). Worker 0 holds
the manhole. Events of every worker are appended to the one events file (each batch of
whole lines is one ``write`` on a file opened with O_APPEND, so lines never interleave).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger
from twisted.python.failure import Failure

from twinkly.config.schema import Config
from twinkly.ops.cluster import POLL_SECONDS, ClusterStatus, PeerStates, Workers
from twinkly.ops.services import ReloadOnHangup

log = Logger()

RESTART_DELAY = 1.0  # seconds before a worker that died is started again


def worker_command(config_path: str, index: int, run_dir: str, overrides: list[str]) -> list[str]:
    """How the supervisor starts worker ``index``: twistd in the foreground, with the
    same configuration file and command-line overrides."""
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "twinkly",
        "--config",
        config_path,
        "--worker",
        str(index),
        "--run-dir",
        run_dir,
        *overrides,
    ]


class _WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


class WorkerSupervisor(service.Service):
    """Starts the workers, restarts one that dies, stops them all."""

    # Twisted's Service says ``name = None`` unannotated (so: type None); IService: a str.
    name = "twinkly-workers"  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        count: int,
        config_path: str,
        run_dir: str,
        overrides: list[str],
        shutdown_timeout: float,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.config_path = config_path
        self.run_dir = run_dir
        self.overrides = overrides
        self.shutdown_timeout = shutdown_timeout
        self.processes: dict[int, Any] = {}  # index -> IProcessTransport
        self._protocols: dict[int, _WorkerProcess] = {}
        self.restarts = 0

    def startService(self) -> None:
        super().startService()
        for index in range(self.count):
            self._spawn(index)
        log.info(
            "started {count} workers, control sockets in {run_dir}",
            count=self.count,
            run_dir=self.run_dir,
        )

    def _spawn(self, index: int) -> None:
        if not self.running:
            return
        process = _WorkerProcess(self, index)
        command = worker_command(self.config_path, index, self.run_dir, self.overrides)
        # The workers write their logs to the supervisor's own stdout and stderr.
        transport = self.reactor.spawnProcess(
            process, command[0], command, env=os.environ.copy(), childFDs={0: "w", 1: 1, 2: 2}
        )
        self.processes[index] = transport
        self._protocols[index] = process

    def worker_ended(self, process: _WorkerProcess, reason: Failure) -> None:
        if self._protocols.get(process.index) is not process:
            return
        del self._protocols[process.index]
        self.processes.pop(process.index, None)
        if not self.running:
            return
        self.restarts += 1
        log.warn(
            "worker {index} ended ({reason}); starting it again in {delay}s",
            index=process.index,
            reason=reason.getErrorMessage(),
            delay=RESTART_DELAY,
        )
        self.reactor.callLater(RESTART_DELAY, self._spawn, process.index)

    def stopService(self) -> defer.Deferred[None]:
        """SIGTERM to every worker (each drains its sessions); SIGKILL to any still there
        after ``shutdown-timeout`` and a few seconds more."""
        super().stopService()
        ended = [p.ended for p in self._protocols.values()]
        for transport in list(self.processes.values()):
            _signal(transport, "TERM")

        def kill() -> None:
            for transport in list(self.processes.values()):
                _signal(transport, "KILL")

        timer = self.reactor.callLater(self.shutdown_timeout + 5.0, kill)

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()
            shutil.rmtree(self.run_dir, ignore_errors=True)

        return defer.DeferredList(ended).addCallback(done)


def _signal(transport: Any, name: str) -> None:
    with contextlib.suppress(ProcessExitedAlready):
        transport.signalProcess(name)


def make_run_dir() -> str:
    """Where the workers' control sockets live: private to this user."""
    return tempfile.mkdtemp(prefix="twinkly-workers-")


def build_supervisor(
    config: Config,
    reactor: Any,
    config_path: str,
    overrides: list[str],
    run_dir: str | None = None,
) -> service.MultiService:
    """The supervisor's tree: the workers, their merged status over HTTP, SIGHUP."""
    run_dir = run_dir or make_run_dir()
    count = config.proxy.workers
    top = service.MultiService()
    WorkerSupervisor(
        reactor, count, config_path, run_dir, overrides, config.proxy.shutdown_timeout
    ).setServiceParent(top)
    peers = PeerStates(Workers(reactor, run_dir, count, None))
    status = ClusterStatus(None, peers, None, reactor.seconds())
    poller = internet.TimerService(POLL_SECONDS, peers.poll)
    poller.clock = reactor
    poller.setServiceParent(top)
    http = config.monitoring.http
    if http.enabled:
        from twinkly.ops.http import make_site

        site = make_site(status, status.metrics)
        site.noisy = False
        internet.TCPServer(http.port, site, interface=http.listen_address).setServiceParent(top)
    ReloadOnHangup(status, reactor).setServiceParent(top)
    return top

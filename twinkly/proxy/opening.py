"""Opening a session's two backends, and going on without the target when it is down.

The truth decides whether a client is served: Twinkly is never less available than the
source of truth. When the target cannot be reached (refused, timed out, shutting down,
out of connections) the session starts on the truth alone and is counted as not
compared, unless ``comparison.require-target`` says to refuse the client as before. The
target's ``TargetBreaker`` decides whether a connect is tried at all, so a target that is
down costs one attempt per backoff period, not one per session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.internet import defer
from twisted.python.failure import Failure

from twinkly.proxy.backend import BackendError, BackendProtocol, connect_backend, startup_parameters
from twinkly.proxy.breaker import TargetBreaker

# SQLSTATE classes that say "not reachable now" rather than "refused": connection
# exceptions, insufficient resources (too many connections), operator intervention
# (shutting down, starting up).
UNAVAILABLE = ("08", "53", "57")


def unavailable(error: BaseException) -> bool:
    return getattr(error, "sqlstate", "08006")[:2] in UNAVAILABLE


def open_backends(
    factory: Any,
    client_parameters: dict[str, str],
    opened: list[BackendProtocol],
    connect: Callable[..., defer.Deferred] = connect_backend,
) -> defer.Deferred:
    """Connect both backends at once; fires with (truth, target or None) or fails naming
    the backend that could not be reached. A backend that connected while the other
    failed is closed."""
    config = factory.config
    breaker: TargetBreaker = factory.breaker
    require = config.comparison.require_target
    max_bytes = config.proxy.max_message_bytes
    gave_up = False

    def connected(protocol: BackendProtocol | None) -> BackendProtocol | None:
        if protocol is None:
            return None
        if gave_up:  # the other backend failed first: do not leak this one
            protocol.terminate()
        else:
            opened.append(protocol)
        return protocol

    def failed(failure: Failure) -> Failure:
        nonlocal gave_up
        gave_up = True
        for protocol in opened:
            protocol.terminate()
        opened.clear()
        return failure

    truth = config.truth
    attempt = connect(
        factory.reactor, truth, startup_parameters(truth, client_parameters), max_bytes
    )
    attempt.addErrback(factory._connect_failed, truth.label)
    attempts = [attempt.addCallback(connected)]

    target = config.target
    if breaker.allow():
        parameters = startup_parameters(target, client_parameters)
        attempt = connect(factory.reactor, target, parameters, max_bytes)
        attempt.addErrback(factory._connect_failed, target.label)

        def target_up(protocol: BackendProtocol) -> BackendProtocol:
            breaker.succeeded()
            return protocol

        def target_down(failure: Failure) -> Failure | None:
            if not unavailable(failure.value):
                return failure  # a refusal (auth, no such database): as before
            breaker.failed(failure.getErrorMessage())
            failure.value.from_target = True
            return failure if require else None

        attempt.addCallbacks(target_up, target_down)
    elif require:
        reason = breaker.reason or "unavailable"
        error = BackendError(f"cannot connect to {target.describe()}: {reason} (retrying later)")
        error.from_target = True  # type: ignore[attr-defined]
        attempt = defer.fail(error)
    else:
        attempt = defer.succeed(None)
    attempts.append(attempt.addCallback(connected))
    return defer.gatherResults(attempts, consumeErrors=True).addCallbacks(tuple, failed)


def make_breaker(factory: Any) -> TargetBreaker:
    """The factory's breaker; its events go to the comparison side (when comparing)."""
    proxy = factory.config.proxy

    def announce(kind: str, fields: dict) -> None:
        comparison = factory.comparison
        if comparison is not None:
            comparison.backend_event(kind, fields, factory.reactor.seconds())

    return TargetBreaker(
        factory.reactor, proxy.target_retry_initial, proxy.target_retry_max, announce
    )


class SessionHooks(NamedTuple):
    """What a new session is given to reach the factory's breaker and comparison side."""

    on_target_lost: Callable[[str, int | None], None]
    on_close: Callable[[Any], None]
    report_cut_short: Callable[[Any, str], None] | None


def session_hooks(
    factory: Any, session_id: int, has_target: bool, on_close: Callable[[Any], None]
) -> SessionHooks:
    """The session's hooks into the factory's breaker and comparison side."""
    breaker: TargetBreaker = factory.breaker
    comparison = factory.comparison
    closed = on_close
    if not has_target:
        breaker.session_without_target()

        def closed(ended: Any) -> None:  # its statements were served, not compared
            if comparison is not None:
                comparison.not_compared(ended.statements)
            on_close(ended)

    report_cut_short = None
    if comparison is not None:

        def report_cut_short(result: Any, reason: str) -> None:
            sql = result.context[0] if result.context else None
            comparison.statement_cut_short(sql, reason, factory.reactor.seconds(), session_id)

    return SessionHooks(breaker.lost, closed, report_cut_short)

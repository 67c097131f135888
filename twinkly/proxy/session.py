"""One client and its two backends, from the moment all three are ready.

The hot path lives here and is kept short: client bytes are framed (to learn what each
backend now owes) and written unchanged to both backends; the truth's bytes are written
unchanged to the client, chunk by chunk, then framed for its tracker; the target's bytes
are only framed and tracked. Flow control is Twisted's producer/consumer:

- a slow client pauses the truth backend (the client transport consumes the truth's);
- a full write buffer towards either backend pauses the client;
- the distance between the two backends is bounded (``lag.LagControl``); a session
  that still overflows stops pairing, never buffering more.

The session's policies live in modules of their own and reach it only through
``ISessionOperations``: the enforcer (comparison.fail-on-differences), COPY-in
alignment, routing patterns. The comparator's verdicts are queued while a tracker
frames and applied once it has returned (``verdicts.VerdictQueue``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twinkly.config.schema import Config
from twinkly.interfaces import (
    IComparison,
    IPairObserver,
    ISessionFacts,
    ISessionOperations,
    IVerdictListener,
)
from twinkly.proxy.backend import BackendProtocol, SideConnection, send_cancel
from twinkly.proxy.copy_in import CopyAlignment
from twinkly.proxy.ending import cancel_executing
from twinkly.proxy.enforcer import Enforcer
from twinkly.proxy.flow import GateReason, PauseGate
from twinkly.proxy.lag import LagControl
from twinkly.proxy.rollback import commit_becomes_rollback
from twinkly.proxy.routing import QueryRouting, Router
from twinkly.proxy.sockets import immediate_writer
from twinkly.proxy.stall import StallWatch, drop_stalled_target
from twinkly.proxy.tap import Tap, tee
from twinkly.proxy.transports import IStreamTransport, stream_of
from twinkly.proxy.verdicts import VerdictQueue
from twinkly.tracking.contexts import INTERNAL, ClientContexts
from twinkly.tracking.owing import owe
from twinkly.tracking.pairing import Pairer
from twinkly.tracking.responses import SUB_BITS, ResponseTracker
from twinkly.wire.backend import ErrorResponse
from twinkly.wire.buffers import tagged
from twinkly.wire.framing import MessageFramer, ProtocolViolation
from twinkly.wire.frontend import Query, Terminate, encode

log = Logger()


DRAIN_SECONDS = 30.0  # how long a closed session waits for a backend's owed answers

ObserverFactory = Callable[[ISessionFacts, IVerdictListener | None], IPairObserver]


@implementer(ISessionOperations, ISessionFacts)
class Session:
    """Fan-out, streaming and pairing for one client connection."""

    def __init__(
        self,
        client_transport: IStreamTransport,
        truth: BackendProtocol,
        target: BackendProtocol | None,
        config: Config,
        clock: IReactorTime,
        observer_factory: ObserverFactory,
        *,
        session_id: int | None = None,
        comparison: IComparison | None = None,
        router: Router | None = None,
        client_parameters: dict[str, str] | None = None,
        on_close: Callable[[Session], None] | None = None,
        on_target_lost: Callable[[str, int | None], None] | None = None,
        report_cut_short: Callable[[Any, str], None] | None = None,
        timer: Callable[[], float] | None = None,
    ) -> None:
        self.client = client_transport
        self.truth = truth
        self.target: BackendProtocol | None = target
        self.config = config
        self.clock = clock
        self.session_id = session_id  # Twinkly's own process id (cancel key)
        self.client_parameters = client_parameters or {}
        self._on_close = on_close
        self._now = clock.seconds  # wall time, for events
        # Statement timings: the factory gives a monotonic clock, so that a step of the
        # wall clock cannot make a statement look slow (tests use the reactor's).
        self._tick = timer or clock.seconds
        self._comparison = comparison
        self.analyze = comparison.analyze if comparison is not None else None
        self.contexts = ClientContexts() if comparison is not None else None
        self._seq = 0  # client messages that owe a response, numbered
        self.stall = StallWatch(clock, config.proxy.target_stall_timeout, self._target_stalled)
        self.gate = PauseGate(client_transport, on_reason=self.stall.changed)
        self.truth_gate = PauseGate(
            stream_of(truth), on_change=self._truth_paused, on_reason=self.stall.changed
        )
        self._target_dropped: str | None = None  # why Twinkly itself let the target go
        self.enforcer: Enforcer | None = None
        self._verdicts: VerdictQueue | None = None
        pairer_observer = self._policies(comparison, observer_factory)
        self.pairer = Pairer(pairer_observer, config.proxy.flow.max_held_results)
        rows = comparison.max_compared_rows if comparison is not None else 0
        self.truth_tracker = ResponseTracker(self.pairer.add_truth, self._tick, rows)
        self.target_tracker = ResponseTracker(
            self.pairer.add_target,
            self._tick,
            rows,
            on_copy_in=lambda: self.copies.check_target_copy(),
        )
        self.copies = CopyAlignment(
            self, self.truth_tracker, self.target_tracker, self.pairer, self._tick
        )
        self.lag = LagControl(
            self.pairer,
            self.truth_tracker,
            self.target_tracker,
            self.gate,
            self.truth_gate,
            config.comparison.max_target_lag,
            config.comparison.max_target_lag_bytes,
            config.proxy.flow.max_target_ahead,
        )
        self.routing = (
            QueryRouting(
                router,
                truth.config.name,
                self,
                self.truth_tracker,
                self.target_tracker,
                self._tick,
                comparison is not None,
            )
            if router is not None
            else None
        )
        self._client_framer = MessageFramer(config.proxy.max_message_bytes)
        self._truth_framer = truth.framer
        # No target: the session runs on the truth alone (unavailable at connect time).
        self._target_framer = target.framer if target is not None else MessageFramer(1024)
        self._to_client = immediate_writer(client_transport)
        self._to_truth = immediate_writer(truth.transport)
        self._to_target = immediate_writer(target.transport) if target is not None else _nothing
        self._pairing_logged = False
        self._pending_tap: Tap | None = None  # to attach at the next message boundary
        self._tap_in: Tap | None = None
        self._side_connections: (
            tuple[BackendProtocol, tuple[SideConnection, SideConnection]] | None
        ) = None
        self.closed = False
        self.bytes_from_client = 0
        self.bytes_to_client = 0
        self.started = clock.seconds()
        self.traced = False  # a protocol tap is attached
        # The factory's hooks: a target connection lost (its breaker announces that once
        # per outage), a statement cut short by a cancel (twinkly/proxy/ending.py).
        self.on_target_lost = on_target_lost
        self.report_cut_short = report_cut_short
        self.send_cancel: Callable[[BackendProtocol], object] = self._send_cancel

    def _policies(
        self, comparison: IComparison | None, observer_factory: ObserverFactory
    ) -> IPairObserver:
        """The enforcer (when the comparison side asks for one), the queue its verdicts
        travel through, and the comparator that gives them; without comparison, the
        plain observer of ``observer_factory``."""
        if comparison is None:
            return observer_factory(self, None)
        differences, slow, hold_bytes = comparison.enforcement()
        if differences or slow:
            self.enforcer = Enforcer(
                self,
                comparison.analyze,
                self.clock,
                (self.truth.config.label, self.target_label()),
                hold_bytes,
                differences,
                self.config.comparison.explain.statement_timeout,
            )
            self._verdicts = VerdictQueue(self.enforcer)
        return comparison.observer(self, self._verdicts)

    @property
    def statements(self) -> int:
        """Client messages that owed an answer so far."""
        return self._seq

    @property
    def process_id(self) -> int | None:
        return self.session_id

    @property
    def target_connected(self) -> bool:
        return self.target is not None

    # --- wiring --------------------------------------------------------------------

    def start(self) -> None:
        """Take over the three connections (all ready)."""
        truth, target = self.truth, self.target
        truth.on_data = self.truth_data
        truth.on_lost = self._backend_lost
        if target is None:  # counted by the factory as not compared; nothing to log here
            self.pairer.abandoned = "the target was unavailable when the session started"
            self._pairing_logged = True
        else:
            target.on_data = self.target_data
            target.on_lost = self._backend_lost
        # A slow client pauses the truth; so does a target too far behind (truth_gate).
        self.client.registerProducer(GateReason(self.truth_gate, "client-buffer"), True)
        stream_of(truth).registerProducer(GateReason(self.gate, "truth-buffer"), True)
        if target is not None:
            stream_of(target).registerProducer(GateReason(self.gate, "target-buffer"), True)
        # Messages that arrived right after ReadyForQuery (a notice, say).
        if truth.leftover:
            self.truth_tracker.feed(truth.leftover)
        if target is not None and target.leftover:
            self.target_tracker.feed(target.leftover)

    def truth_settings(self) -> dict[str, str]:
        """The truth session's reported settings now: start-up values, then changes."""
        settings = dict(self.truth.server_parameters)
        for name, value in self.truth_tracker.parameters.items():
            settings[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        return settings

    def side_connections(self) -> tuple[SideConnection, SideConnection] | None:
        """How to log in to both backends as this session did (for EXPLAIN)."""
        target = self.target
        if target is None:
            return None
        made = self._side_connections  # asked after every statement: made once per target
        if made is None or made[0] is not target:
            sides = (
                SideConnection(self.truth.config, self.truth.parameters),
                SideConnection(target.config, target.parameters),
            )
            self._side_connections = made = (target, sides)
        return made[1]

    def at_message_boundary(self) -> bool:
        """Every stream of the session is between two messages (a trace may start)."""
        target_pending = self._target_framer.pending if self.target is not None else 0
        return not (self._client_framer.pending or self._truth_framer.pending or target_pending)

    def attach_tap(self, tap: Tap) -> None:
        """See every chunk of the three legs both ways from the next point where all
        streams are between two messages (so that a decoder starts in step). Sessions
        without a tap keep their plain hot path."""
        if self.at_message_boundary():
            self._tap(tap)
        else:
            self._pending_tap = tap

    def _tap(self, tap: Tap) -> None:
        self._pending_tap = None
        self.traced = True
        self._tap_in = tap
        self._to_client = tee(tap[("client", "<")], self._to_client)
        self._to_truth = tee(tap[("truth", ">")], self._to_truth)
        self._to_target = tee(tap[("target", ">")], self._to_target)

    def _tapped(self, leg: str, data: bytes) -> None:
        if self._tap_in is not None:
            self._tap_in[(leg, "<" if leg != "client" else ">")](data)

    def _tap_at_boundary(self) -> None:
        if self._pending_tap is not None and self.at_message_boundary():
            self._tap(self._pending_tap)

    def _truth_paused(self, paused: bool) -> None:
        """The truth's stream stopped (slow client, lagging target): its timings then
        are Twinkly's doing, not the server's."""
        if paused:
            self.truth_tracker.paused()
        else:
            self.truth_tracker.resumed()

    # --- ISessionOperations (for the enforcer, COPY-in alignment, routing) ---------

    def next_sequence(self) -> int:
        self._seq += 1
        return self._seq

    def forward(self, messages: list[tuple[int, bytes]]) -> None:
        """Send whole client messages on (the enforcer releases them group by group)."""
        data = b"".join(tagged(bytes((type_byte,)), payload) for type_byte, payload in messages)
        self._fan_out(data, messages)

    def deliver(self, data: bytes) -> None:
        """Bytes for the client that the enforcer has released."""
        self._to_client(data)
        self.bytes_to_client += len(data)

    def internal_query(self, sql: str) -> int:
        """Run a statement of Twinkly's own on both backends; the client never sees its
        answer. Returns the sequence number its results carry."""
        seq = self.next_sequence()
        now = self._tick()
        query = encode(Query(sql))
        for backend, tracker in (
            (self.truth, self.truth_tracker),
            (self.target, self.target_tracker),
        ):
            if backend is not None:
                tracker.expect("Q", now, seq, INTERNAL)
                stream_of(backend).write(query)
        return seq

    def send_to_truth(self, data: bytes) -> None:
        self._to_truth(data)

    def send_to_target(self, data: bytes) -> None:
        self._to_target(data)

    def pause_client(self, reason: str) -> None:
        self.gate.pause(reason)

    def resume_client(self, reason: str) -> None:
        self.gate.resume(reason)

    def target_label(self) -> str:
        return self.target.config.label if self.target is not None else "the target"

    # --- the hot path --------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        """Bytes from the client; raises ProtocolViolation on malformed framing."""
        if self.traced:
            self._tapped("client", data)
        messages = self._client_framer.feed(data)
        self.bytes_from_client += len(data)
        if self.enforcer is not None:
            self.enforcer.client_messages(messages)
        elif self.routing is None or not self.routing.take(data, messages, self.session_id):
            self._fan_out(data, messages)
        if self._pending_tap is not None:
            self._tap_at_boundary()

    def _fan_out(self, data: bytes, messages: list[tuple[int, bytes]]) -> None:
        """The client's bytes to both backends, with what each now owes."""
        terminate = False
        hold_seq = 0
        if messages:
            # Without a target nothing is owed there (its queue would only grow).
            self._seq, hold_seq, terminate = owe(
                messages,
                self._tick(),
                self._seq,
                self.truth_tracker,
                self.target_tracker if self.target is not None else None,
                self.contexts,
            )
        self._to_truth(data)
        if self.target is not None:
            if self.truth_tracker.status == "E" and self.analyze is not None:
                data = self._commit_becomes_rollback(data, messages)
            if self.copies.holding:
                self.copies.hold(data)
            else:
                self._to_target(data)
                if hold_seq:
                    self.copies.start(hold_seq << SUB_BITS)
        if terminate:
            self.close(client_terminated=True)

    def _commit_becomes_rollback(self, data: bytes, messages: list[tuple[int, bytes]]) -> bytes:
        """The truth's transaction has failed: the target's COMMIT goes as ROLLBACK."""
        if self._client_framer.buffered:
            return data  # part of a message is still to come: never rewritten
        rewritten = commit_becomes_rollback(data, messages, self.analyze)  # type: ignore[arg-type]
        if rewritten is None:
            return data
        log.info(
            "session {pid}: the source of truth's transaction failed; the target's"
            " COMMIT is sent as ROLLBACK",
            pid=self.session_id,
        )
        return rewritten

    def truth_data(self, data: bytes) -> None:
        if self.traced:
            self._tapped("truth", data)
        enforcer = self.enforcer
        if enforcer is None:
            self._to_client(data)
            self.bytes_to_client += len(data)
        else:
            enforcer.truth_bytes(data)
        tracker = self.truth_tracker
        try:
            tracker.receive(self._truth_framer, data)
        except ProtocolViolation as e:
            self._backend_garbled(self.truth, e)
            return
        if enforcer is not None:
            if self._verdicts:
                self._verdicts.apply()  # type: ignore[union-attr]
            enforcer.after_truth()
        self.lag.truth_received(self.target is not None)
        if self.copies.holding:
            self.copies.check()
        elif self.target_tracker.copy_in:
            self.copies.check_target_copy()
        if tracker.lost_track is not None or self.pairer.abandoned is not None:
            self._pairing_lost(tracker)
        self.lag.check(self.target.transport if self.target is not None else None)
        if self._pending_tap is not None:
            self._tap_at_boundary()

    def target_data(self, data: bytes) -> None:
        if self.traced:
            self._tapped("target", data)
        tracker = self.target_tracker
        routing = self.routing
        if routing is not None and routing.target_answers:
            self._to_client(data)
        try:
            tracker.receive(self._target_framer, data)
        except ProtocolViolation as e:
            self._backend_garbled(self.target, e)  # type: ignore[arg-type]
            return
        if self._verdicts:
            self._verdicts.apply()  # type: ignore[union-attr]
        if routing is not None:
            routing.target_progress()
        if self.copies.holding:
            self.copies.check()
        if tracker.lost_track is not None or self.pairer.abandoned is not None:
            self._pairing_lost(tracker)
        self.lag.check(self.target.transport if self.target is not None else None)
        if self._pending_tap is not None:
            self._tap_at_boundary()

    def _pairing_lost(self, tracker: ResponseTracker) -> None:
        """Stop pairing once (a stream could not be followed, or a cap was reached);
        the session goes on serving the client."""
        if self._pairing_logged:
            return
        if tracker.lost_track is not None and self.pairer.abandoned is None:
            side = "source of truth" if tracker is self.truth_tracker else "target"
            self.pairer.abandon(f"lost track of the {side}'s responses: {tracker.lost_track}")
        self._pairing_logged = True
        log.warn(
            "session {pid}: pairing stopped ({reason}); the client is still served",
            pid=self.session_id,
            reason=self.pairer.abandoned,
        )
        self.gate.resume("target-lag")

    # --- ending --------------------------------------------------------------------

    def _backend_garbled(self, backend: BackendProtocol, error: ProtocolViolation) -> None:
        """A backend sent bytes that are not the protocol: drop that connection."""
        log.error(
            "{backend} sent an invalid message: {error}",
            backend=backend.config.describe(),
            error=str(error),
        )
        stream_of(backend).abortConnection()

    def _backend_lost(self, backend: BackendProtocol, reason: Failure) -> None:
        if self.closed:
            return
        if backend is self.truth:
            log.warn(
                "source of truth {backend} closed the connection: {reason}",
                backend=backend.config.describe(),
                reason=reason.getErrorMessage(),
            )
            if not (self.truth_tracker.fatal and self.enforcer is None):
                # A server that ends a session says why once, in its FATAL error, then
                # closes; when the client already has the truth's, a second error would
                # be taken as the answer to its next query.
                error = ErrorResponse.make(
                    "FATAL",
                    "08006",
                    "Twinkly lost the connection to the source of truth"
                    f" {backend.config.describe()}",
                )
                self.client.write(encode(error))
            self.close(why="the source of truth's connection was lost")
        else:
            log.warn(
                "target {backend} closed the connection; the session goes on with the"
                " source of truth alone: {reason}",
                backend=backend.config.describe(),
                reason=reason.getErrorMessage(),
            )
            self.target = None
            why = f"the target {backend.config.describe()} closed the connection"
            if self._target_dropped is not None:
                why = self._target_dropped  # reported when dropped, not as an outage
            elif self.on_target_lost is not None:
                self.on_target_lost(why, self.session_id)
            elif self._comparison is not None:
                self._comparison.backend_unavailable(why, self._now(), self.session_id)
            self.pairer.abandon(why)
            self.gate.resume("target-buffer")
            self.gate.resume("target-lag")

    def _target_stalled(self, waited: float) -> None:
        if not self.closed and self.target is not None:
            self._target_dropped = drop_stalled_target(self, self.target, waited, self._comparison)

    def close(self, client_terminated: bool = False, why: str = "the client left") -> None:
        """Close the client and both backends (idempotent). Backends get a Terminate
        unless the client's own was just forwarded to them. A backend still executing
        when the client left (not by Terminate) is cancelled, then drained."""
        if self.closed:
            return
        self.closed = True
        self.stall.stop()
        self.gate.resume("target-lag")
        if not client_terminated:
            cancel_executing(self, why, self.send_cancel)
        for backend, tracker in (
            (self.truth, self.truth_tracker),
            (self.target, self.target_tracker),
        ):
            if backend is None:
                continue
            # A backend that still owes answers is drained so they get compared.
            drain = DRAIN_SECONDS if tracker.owed and self.pairer.abandoned is None else 0.0
            if backend is self.target and self.copies.holding:
                # Bytes held during a COPY go first, then the goodbye, in order.
                if not client_terminated:
                    self.copies.hold(encode(Terminate()))
                backend.terminate(send=False, drain=DRAIN_SECONDS)
                continue
            backend.terminate(send=not client_terminated, drain=drain)
        self.client.loseConnection()
        if self._on_close is not None:
            self._on_close(self)

    def _send_cancel(self, backend: BackendProtocol) -> object:
        return send_cancel(self.clock, backend.config, backend.key)  # type: ignore[arg-type]

    def cancel(self, reactor: object) -> None:
        """A client's CancelRequest: deliver it to both backends."""
        for backend in (self.truth, self.target):
            if backend is not None and backend.key is not None:
                send_cancel(reactor, backend.config, backend.key)


def _nothing(*_: object) -> None:
    return None


def session_counters(session: Session) -> dict[str, int]:
    """What one session moved and how often it waited, for the metrics."""
    return {
        "bytes_from_client": session.bytes_from_client,
        "bytes_to_client": session.bytes_to_client,
        "bytes_from_truth": session.truth_tracker.consumed,
        "bytes_from_target": session.target_tracker.consumed,
        "pauses_client": session.gate.pauses,
        "pauses_truth": session.truth_gate.pauses,
    }

"""One client and its two backends, from the moment all three are ready.

The hot path lives here and is kept short: client bytes are framed (to learn what each
backend now owes) and written unchanged to both backends; the truth's bytes are written
unchanged to the client, chunk by chunk, then framed for its tracker; the target's bytes
are only framed and tracked. Flow control is Twisted's producer/consumer:

- a slow client pauses the truth backend (the client transport consumes the truth's);
- a full write buffer towards either backend pauses the client;
- a target that lags too far behind the truth pauses the client, and one that runs too
  far ahead is paused itself; a session that still overflows stops pairing, never
  buffering more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twinkly.config.schema import Config
from twinkly.perf.explain import SideConnection
from twinkly.proxy.backend import BackendProtocol, send_cancel
from twinkly.proxy.copy_in import CopyAlignment, may_copy_from
from twinkly.proxy.flow import GateReason, PauseGate
from twinkly.proxy.sockets import immediate_writer
from twinkly.tracking.contexts import INTERNAL, ClientContexts
from twinkly.tracking.pairing import IPairObserver, Pairer
from twinkly.tracking.responses import (
    CLIENT_EXPECTATIONS,
    DESCRIBE_PORTAL,
    SUB_BITS,
    ResponseTracker,
)
from twinkly.wire.backend import ErrorResponse
from twinkly.wire.buffers import tagged
from twinkly.wire.framing import MessageFramer, ProtocolViolation
from twinkly.wire.frontend import Parse, Query, Terminate, encode

if TYPE_CHECKING:
    from twinkly.proxy.enforcer import Enforcer

log = Logger()

_TERMINATE = ord("X")
_DESCRIBE = ord("D")
_QUERY = ord("Q")
_PARSE = ord("P")
_EXECUTE = ord("E")


DRAIN_SECONDS = 30.0  # how long a closed session waits for a backend's owed answers


class Session:
    """Fan-out, streaming and pairing for one client connection."""

    def __init__(
        self,
        client_transport: object,
        truth: BackendProtocol,
        target: BackendProtocol,
        config: Config,
        observer: IPairObserver,
        clock: IReactorTime,
        on_close: object = None,
        timer: Callable[[], float] | None = None,
    ) -> None:
        self.client = client_transport
        self.truth = truth
        self.target: BackendProtocol | None = target
        self.config = config
        self.clock = clock
        self._on_close = on_close
        self._now = clock.seconds  # wall time, for events
        # Statement timings: the factory gives a monotonic clock, so that a step of the
        # wall clock cannot make a statement look slow (tests use the reactor's).
        self._tick = timer or clock.seconds
        flow = config.proxy.flow
        self._max_lag = config.comparison.max_target_lag
        self._max_lag_bytes = config.comparison.max_target_lag_bytes
        self._max_ahead = flow.max_target_ahead
        self.pairer = Pairer(observer, flow.max_held_results)
        self.truth_tracker = ResponseTracker(self.pairer.add_truth, self._tick)
        self.target_tracker = ResponseTracker(self.pairer.add_target, self._tick)
        self.copies = CopyAlignment(self)
        self.target_tracker.on_copy_in = self.copies.check_target_copy
        self._client_framer = MessageFramer(config.proxy.max_message_bytes)
        self._truth_framer = truth.framer
        self._target_framer = target.framer
        self.gate = PauseGate(client_transport)  # type: ignore[arg-type]
        self.truth_gate = PauseGate(truth.transport)  # type: ignore[arg-type]
        self.truth_gate.on_change = self._truth_paused
        self._to_client = immediate_writer(client_transport)
        self._to_truth = immediate_writer(truth.transport)
        self._to_target = immediate_writer(target.transport)
        self._target_paused = False
        self.contexts: ClientContexts | None = None  # set when results are compared
        # Which backend, if only one, a simple query goes to (routing patterns).
        self.router: Callable[[str], str | None] | None = None
        self._target_answers = False  # a routed query: the target's bytes go to the client
        self.enforcer: Enforcer | None = None  # comparison.fail-on-differences
        self.analyze: Callable[[str], tuple] | None = None
        self._seq = 0  # client messages that owe a response, numbered
        self._pairing_logged = False
        self.closed = False
        self.process_id: int | None = None  # Twinkly's own, given by the factory
        self.bytes_from_client = 0
        self.bytes_to_client = 0
        self.started = clock.seconds()
        self.traced = False  # a protocol trace is attached
        self.client_parameters: dict[str, str] = {}  # the client's start-up parameters

    @property
    def statements(self) -> int:
        """Client messages that owed an answer so far."""
        return self._seq

    # --- wiring --------------------------------------------------------------------

    def start(self) -> None:
        """Take over the three connections (all ready)."""
        truth, target = self.truth, self.target
        assert target is not None
        truth.on_data = self.truth_data
        target.on_data = self.target_data
        truth.on_lost = self._backend_lost
        target.on_lost = self._backend_lost
        # A slow client pauses the truth; so does a target too far behind (truth_gate).
        self.client.registerProducer(  # type: ignore[attr-defined]
            GateReason(self.truth_gate, "client-buffer"), True
        )
        truth.transport.registerProducer(GateReason(self.gate, "truth-buffer"), True)
        target.transport.registerProducer(GateReason(self.gate, "target-buffer"), True)
        # Messages that arrived right after ReadyForQuery (a notice, say).
        if truth.leftover:
            self.truth_tracker.feed(truth.leftover)
        if target.leftover:
            self.target_tracker.feed(target.leftover)

    def truth_settings(self) -> dict[str, str]:
        """The truth session's reported settings now: start-up values, then changes."""
        settings = dict(self.truth.server_parameters)
        for name, value in self.truth_tracker.parameters.items():
            settings[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        return settings

    def side_connections(self) -> tuple[SideConnection, SideConnection] | None:
        """How to log in to both backends as this session did (for EXPLAIN)."""
        if self.target is None:
            return None
        return (
            SideConnection(self.truth.config, self.truth.parameters),
            SideConnection(self.target.config, self.target.parameters),
        )

    def at_message_boundary(self) -> bool:
        """Every stream of the session is between two messages (a trace may start)."""
        target_pending = self._target_framer.pending if self.target is not None else 0
        return not (self._client_framer.pending or self._truth_framer.pending or target_pending)

    def _truth_paused(self, paused: bool) -> None:
        """The truth's stream stopped (slow client, lagging target): its timings then
        are Twinkly's doing, not the server's."""
        if paused:
            self.truth_tracker.paused()
        else:
            self.truth_tracker.resumed()

    # --- the hot path --------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        """Bytes from the client; raises ProtocolViolation on malformed framing."""
        messages = self._client_framer.feed(data)
        self.bytes_from_client += len(data)
        if self.enforcer is not None:
            self.enforcer.client_messages(messages)
            return
        if self.router is not None and self._route(data, messages):
            return
        self._fan_out(data, messages)

    def forward(self, messages: list[tuple[int, bytes]]) -> None:
        """Send whole client messages on (the enforcer releases them group by group)."""
        data = b"".join(tagged(bytes((type_byte,)), payload) for type_byte, payload in messages)
        self._fan_out(data, messages)

    def _fan_out(self, data: bytes, messages: list[tuple[int, bytes]]) -> None:
        """The client's bytes to both backends, with what each now owes."""
        terminate = False
        copy_from = False
        hold_seq = 0
        if messages:
            now = self._tick()
            truth_expect = self.truth_tracker.expect
            target_expect = self.target_tracker.expect
            seq = self._seq
            contexts = self.contexts
            for type_byte, payload in messages:
                kind = CLIENT_EXPECTATIONS.get(type_byte)
                if kind is not None:
                    if type_byte == _DESCRIBE and payload[:1] == b"P":
                        kind = DESCRIBE_PORTAL
                    seq += 1
                    context = contexts.context(type_byte, payload) if contexts else None
                    truth_expect(kind, now, seq, context)
                    target_expect(kind, now, seq, context)
                    if type_byte == _QUERY or type_byte == _PARSE:
                        copy_from = may_copy_from(payload)
                        if copy_from and type_byte == _QUERY:
                            hold_seq = seq
                    elif type_byte == _EXECUTE and copy_from:
                        hold_seq = seq
                elif type_byte == _TERMINATE:
                    terminate = True
            self._seq = seq
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
        """The truth's transaction has failed, so the client's COMMIT will roll it back
        there; send the target ROLLBACK so that its transaction ends the same way.

        Only whole simple-query messages are rewritten (COMMIT is sent alone and small);
        a rewrite is not attempted when the chunk holds part of a message."""
        if self._client_framer.buffered or sum(5 + len(p) for _, p in messages) != len(data):
            return data
        changed = False
        out = []
        for type_byte, payload in messages:
            if type_byte == _QUERY and self._is_commit(payload[:-1]):
                out.append(encode(Query("ROLLBACK")))
                changed = True
            elif type_byte == _PARSE:
                name_end = payload.find(0)
                if self._is_commit(payload[name_end + 1 : payload.find(0, name_end + 1)]):
                    name = payload[:name_end].decode("utf-8", "replace")
                    out.append(encode(Parse(name, "ROLLBACK")))
                    changed = True
                else:
                    out.append(tagged(b"P", payload))
            else:
                out.append(tagged(bytes((type_byte,)), payload))
        if changed:
            log.info(
                "session {pid}: the source of truth's transaction failed; the target's"
                " COMMIT is sent as ROLLBACK",
                pid=self.process_id,
            )
        return b"".join(out) if changed else data

    # --- for comparison.fail-on-differences (twinkly/proxy/enforcer.py) -------------------------

    def deliver(self, data: bytes) -> None:
        """Bytes for the client that the enforcer has released."""
        self._to_client(data)
        self.bytes_to_client += len(data)

    def internal_query(self, sql: str) -> int:
        """Run a statement of Twinkly's own on both backends; the client never sees its
        answer. Returns the sequence number its results carry."""
        self._seq += 1
        now = self._tick()
        query = encode(Query(sql))
        for backend, tracker in (
            (self.truth, self.truth_tracker),
            (self.target, self.target_tracker),
        ):
            if backend is not None:
                tracker.expect("Q", now, self._seq, INTERNAL)
                backend.transport.write(query)
        return self._seq

    def comparator_holding(self, holding: bool) -> None:
        observer = self.pairer.observer
        if hasattr(observer, "holding"):
            observer.holding = holding

    def target_label(self) -> str:
        return self.target.config.label if self.target is not None else "the target"

    def _is_commit(self, sql: bytes) -> bool:
        infos = self.analyze(sql.decode("utf-8", "replace"))  # type: ignore[misc]
        return len(infos) == 1 and infos[0].transaction == "commit"

    def truth_data(self, data: bytes) -> None:
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
            enforcer.after_truth()
        if self.pairer.truth_ahead > self._max_lag:
            self.gate.pause("target-lag")
        if (
            self.target is not None
            and not self.pairer.target_ahead  # the target has not already answered it
            and tracker.consumed - self.pairer.truth_done_end > self._max_lag_bytes
        ):
            # The target is that far behind within the truth's answers: the client
            # waits (the truth is not read) until the target catches up.
            self.truth_gate.pause("target-lag-bytes")
        if self.copies.holding:
            self.copies.check()
        elif self.target_tracker.copy_in:
            self.copies.check_target_copy()
        self._check_flow(tracker)

    def target_data(self, data: bytes) -> None:
        tracker = self.target_tracker
        if self._target_answers:
            self._to_client(data)
        try:
            tracker.receive(self._target_framer, data)
        except ProtocolViolation as e:
            self._backend_garbled(self.target, e)  # type: ignore[arg-type]
            return
        if self._target_answers and not tracker.owed:
            self._target_answers = False
            self.gate.resume("routed")
        if self.copies.holding:
            self.copies.check()
        self._check_flow(tracker)

    def _route(self, data: bytes, messages: list[tuple[int, bytes]]) -> bool:
        """Send a simple query that matches a routing pattern to one backend only.

        Routing applies to a chunk that is exactly one Query. A query routed to the
        target is answered by the target, so it is routed only when neither backend
        owes anything (its answer cannot interleave with the truth's), and the client
        is paused until the answer is complete. Returns False to run it on both."""
        if len(messages) != 1 or messages[0][0] != _QUERY or len(data) != 5 + len(messages[0][1]):
            return False
        sql = messages[0][1][:-1].decode("utf-8", "replace")
        backend = self.router(sql)  # type: ignore[misc]
        if backend is None:
            return False
        self._seq += 1
        context = (sql, None, ()) if self.contexts is not None else None
        if backend == self.truth.config.name:
            self.truth_tracker.expect("Q", self._tick(), self._seq, context)
            self._to_truth(data)
            return True
        if self.target is None or self.truth_tracker.owed or self.target_tracker.owed:
            self._seq -= 1
            log.info(
                "session {pid}: not routed (answers outstanding): {sql}",
                pid=self.process_id,
                sql=sql[:200],
            )
            return False
        self.target_tracker.expect("Q", self._tick(), self._seq, context)
        self._target_answers = True
        self.gate.pause("routed")
        self._to_target(data)
        return True

    def _check_flow(self, tracker: ResponseTracker) -> None:
        pairer = self.pairer
        if tracker.lost_track is not None or pairer.abandoned is not None:
            self._pairing_lost(tracker)
        if "target-lag-bytes" in self.truth_gate.reasons and (
            self.target is None
            or pairer.target_ahead
            or self.truth_tracker.consumed - pairer.truth_done_end <= self._max_lag_bytes // 2
        ):
            self.truth_gate.resume("target-lag-bytes")
        if pairer.truth_ahead <= self._max_lag // 2:
            self.gate.resume("target-lag")
        ahead = pairer.target_ahead
        if ahead > self._max_ahead and not self._target_paused and self.target is not None:
            self._target_paused = True
            self.target.transport.pauseProducing()
            self.target_tracker.paused()
        elif self._target_paused and ahead <= self._max_ahead // 2:
            self._target_paused = False
            if self.target is not None:
                self.target.transport.resumeProducing()
                self.target_tracker.resumed()

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
            pid=self.process_id,
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
        backend.transport.abortConnection()

    def _backend_lost(self, backend: BackendProtocol, reason: Failure) -> None:
        if self.closed:
            return
        if backend is self.truth:
            log.warn(
                "source of truth {backend} closed the connection: {reason}",
                backend=backend.config.describe(),
                reason=reason.getErrorMessage(),
            )
            error = ErrorResponse.make(
                "FATAL",
                "08006",
                f"Twinkly lost the connection to the source of truth {backend.config.describe()}",
            )
            self.client.write(encode(error))  # type: ignore[attr-defined]
            self.close()
        else:
            log.warn(
                "target {backend} closed the connection; the session goes on with the"
                " source of truth alone: {reason}",
                backend=backend.config.describe(),
                reason=reason.getErrorMessage(),
            )
            self.target = None
            reason = f"the target {backend.config.describe()} closed the connection"
            monitor = getattr(self.pairer.observer, "monitor", None)
            if monitor is not None:
                monitor.backend_unavailable(reason, self._now(), self.process_id)
            self.pairer.abandon(reason)
            self.gate.resume("target-buffer")
            self.gate.resume("target-lag")

    def close(self, client_terminated: bool = False) -> None:
        """Close the client and both backends (idempotent). Backends get a Terminate
        unless the client's own was just forwarded to them."""
        if self.closed:
            return
        self.closed = True
        self.gate.resume("target-lag")
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
        self.client.loseConnection()  # type: ignore[attr-defined]
        if self._on_close is not None:
            self._on_close(self)  # type: ignore[operator]

    def cancel(self, reactor: object) -> None:
        """A client's CancelRequest: deliver it to both backends."""
        for backend in (self.truth, self.target):
            if backend is not None and backend.key is not None:
                send_cancel(reactor, backend.config, backend.key)


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

"""Flow control: a producer paused for several reasons at once.

A connection may be paused because the client reads slowly, because a backend's write
buffer is full, or because the target lags; it resumes only when no reason holds. Each
reason looks like a plain producer to the transport that registers it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


class PauseGate:
    """Pauses a producer while any named reason holds, resumes when none does."""

    def __init__(
        self,
        producer: IPushProducer,
        on_change: Callable[[bool], None] | None = None,
        on_reason: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._producer = producer
        # The reasons holding now (read only): "r in gate.held" is the hot path's test.
        self.held: set[str] = set()
        self._reasons = self.held
        self.pauses = 0
        self.on_change = on_change  # told paused (True) / resumed (False)
        self.on_reason = on_reason  # told each reason as it begins (True) or ends (False)

    def pause(self, reason: str) -> None:
        if reason in self._reasons:
            return
        if not self._reasons:
            self.pauses += 1
            self._producer.pauseProducing()
            if self.on_change is not None:
                self.on_change(True)
        self._reasons.add(reason)
        if self.on_reason is not None:
            self.on_reason(reason, True)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if self.on_reason is not None:
            self.on_reason(reason, False)
        if not self._reasons:
            self._producer.resumeProducing()
            if self.on_change is not None:
                self.on_change(False)

    @property
    def reasons(self) -> frozenset[str]:
        return frozenset(self._reasons)

    def holds(self, reason: str) -> bool:
        return reason in self._reasons


@implementer(IPushProducer)
class GateReason:
    """Makes one reason of a PauseGate look like a producer to a consumer transport."""

    def __init__(self, gate: PauseGate, reason: str) -> None:
        self._gate = gate
        self._reason = reason

    def pauseProducing(self) -> None:
        self._gate.pause(self._reason)

    def resumeProducing(self) -> None:
        self._gate.resume(self._reason)

    def stopProducing(self) -> None:
        self._gate.resume(self._reason)

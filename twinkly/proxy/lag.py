"""How far the target may lag behind the truth, or run ahead of it.

The truth's answer streams to the client while the target's is only tracked, so the
two can drift apart; what sits between them is held (results waiting for their pair)
and must stay bounded:

- the target lags by more than ``max_lag`` results: the client is paused (no new
  statements) until it is back within half of that;
- the target lags by more than ``max_lag_bytes`` within the truth's answers: the truth
  is no longer read (the client waits) until the target is within half of that;
- the target runs more than ``max_ahead`` results ahead: the target is paused.
"""

from __future__ import annotations

from typing import Any

from twinkly.proxy.flow import PauseGate
from twinkly.tracking.pairing import Pairer
from twinkly.tracking.responses import ResponseTracker


class LagControl:
    """One session's bounds on the distance between its two backends."""

    def __init__(
        self,
        pairer: Pairer,
        truth_tracker: ResponseTracker,
        target_tracker: ResponseTracker,
        client_gate: PauseGate,
        truth_gate: PauseGate,
        max_lag: int,
        max_lag_bytes: int,
        max_ahead: int,
    ) -> None:
        self._pairer = pairer
        # The pairer's queues themselves: their lengths are read after every read.
        self._truth_waiting = pairer.truth_pending()
        self._target_waiting = pairer.target_pending()
        self._truth_tracker = truth_tracker
        self._target_tracker = target_tracker
        self._client_gate = client_gate
        self._truth_gate = truth_gate
        self._max_lag = max_lag
        self._max_lag_bytes = max_lag_bytes
        self._max_ahead = max_ahead
        self._target_paused = False

    def truth_received(self, target_connected: bool) -> None:
        """After the truth's bytes were tracked: pause whoever gets too far ahead."""
        pairer = self._pairer
        if len(self._truth_waiting) > self._max_lag:
            self._client_gate.pause("target-lag")
        if (
            target_connected
            and not self._target_waiting  # the target has not already answered it
            and self._truth_tracker.consumed - pairer.truth_done_end > self._max_lag_bytes
        ):
            # The target is that far behind within the truth's answers: the client
            # waits (the truth is not read) until the target catches up.
            self._truth_gate.pause("target-lag-bytes")

    def check(self, target_transport: Any) -> None:
        """After either side's bytes were tracked: resume what is back within bounds,
        pause a target that ran too far ahead. ``target_transport`` is None once the
        target is gone. Runs after every read: each test is a set lookup or a length
        first."""
        pairer = self._pairer
        if "target-lag-bytes" in self._truth_gate.held and (
            target_transport is None
            or self._target_waiting
            or self._truth_tracker.consumed - pairer.truth_done_end <= self._max_lag_bytes // 2
        ):
            self._truth_gate.resume("target-lag-bytes")
        if (
            "target-lag" in self._client_gate.held
            and len(self._truth_waiting) <= self._max_lag // 2
        ):
            self._client_gate.resume("target-lag")
        if target_transport is None:
            return
        ahead = len(self._target_waiting)
        if ahead > self._max_ahead and not self._target_paused:
            self._target_paused = True
            target_transport.pauseProducing()
            self._target_tracker.paused()
        elif self._target_paused and ahead <= self._max_ahead // 2:
            self._target_paused = False
            target_transport.resumeProducing()
            self._target_tracker.resumed()
